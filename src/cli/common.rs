//! The flags every subcommand shares: where to listen, workers, limits, lifecycle,
//! logging, and who a connection is from (PROXY headers, per-client limits).

use clap::{value_parser, Args};

use super::config::{Admission, Common, Rate};
use super::values::{self, Timespan};
use crate::admission::client::Prefixes;
use crate::admission::proxy_header::{IpRange, TrustedPeers};
use crate::log::Level;
use crate::runtime::ConnectionsMax;
use crate::systemd::activation::ListenAddr;

/// Flags every subcommand shares: where to listen, workers, limits, lifecycle, logging.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Listen on ADDR as well as on any activated sockets: HOST:PORT, [V6]:PORT, PORT,
    /// /path or @name (repeatable)
    ///
    /// HOST is an IP literal; a PORT alone is every address, IPv4 and IPv6, as
    /// ListenStream=8080. A socket bound here is named by its address as ringsock prints it
    /// ([::]:8080, /run/x.sock), for NAME=TARGET and --proxy-protocol-on. With no activated
    /// socket and no --listen, serve listens on 127.0.0.1:8080 and proxy refuses to start.
    #[arg(long, value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub listen: Vec<ListenAddr>,

    /// Worker threads [default: the CPUs this process may use]
    ///
    /// Each worker runs its own runtime (io_uring, else epoll) and accepts on its own copy
    /// of every listening socket, so the kernel spreads the connections and nothing on the
    /// data path crosses threads.
    #[arg(long, value_name = "N", value_parser = values::at_least_one::<usize>)]
    pub threads: Option<usize>,

    /// Maximum simultaneous connections; more wait in the listen backlog [default: 16384,
    /// or fewer if the open file limit cannot hold that many]
    ///
    /// A permit is taken before accept(2), so the limit is exact and a client over it waits
    /// in the backlog; systemd-socket-proxyd accepts such a client and closes it instead,
    /// one connection too late. Its default of 256 lets 256 idle clients lock everyone out,
    /// while an idle connection costs a few KiB here.
    ///
    /// ringsock raises its soft open file limit (RLIMIT_NOFILE) to the hard one. Without
    /// -c, the default is lowered to what that limit holds, 64 files kept back and three
    /// per connection (proxy: both sockets and a pipe end's share while splicing; serve:
    /// the socket, the file being sent and the socket's duplicate an I/O thread holds while
    /// it sends from the disk), and the log says so at start: "at most N connections at
    /// once: the open file limit of L holds no more". A -c the limit cannot hold is kept,
    /// with a warning. Raise LimitNOFILE= together with -c.
    #[arg(short = 'c', long, value_name = "N", value_parser = values::at_least_one::<usize>)]
    pub connections_max: Option<usize>,

    /// Exit once no connection was open for this long (e.g. 30s, 5min, infinity)
    ///
    /// The exit status is 0. Connections to the proxy's metrics socket do not count.
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "infinity",
        value_parser = values::timespan
    )]
    pub exit_idle_time: Timespan,

    /// On SIGTERM/SIGINT, how long open connections may take to finish
    ///
    /// Accepting stops at once: a --listen socket is closed, so its new clients are
    /// refused, while an activated one stays with the service manager, which queues them
    /// for the next start. When this time is up, or at a second SIGTERM or SIGINT, the
    /// connections still open are cut (TCP ones with RST, so no client takes a truncated
    /// stream for a complete one) and ringsock exits 0. The shipped units set
    /// TimeoutStopSec=45s, above the default.
    #[arg(long, value_name = "TIMESPAN", default_value = "30s", value_parser = values::timespan)]
    pub shutdown_timeout: Timespan,

    /// error, warning, info or debug [default: $RINGSOCK_LOG_LEVEL, $SYSTEMD_LOG_LEVEL, info]
    ///
    /// Log lines go to standard error, with syslog priority prefixes when journald reads
    /// them (JOURNAL_STREAM), so journalctl -p warning shows only the driver fallback,
    /// accept errors and failures. debug adds detail such as aborted connections.
    #[arg(long, value_name = "LEVEL", value_parser = values::log_level)]
    pub log_level: Option<Level>,

    /// Connections from ADDR[/LEN] (a load balancer) start with a PROXY protocol v1 or v2
    /// header naming the real client; one without a valid header within 3 s is closed
    /// (repeatable)
    ///
    /// For example 10.0.0.0/8, 2001:db8::/32, or 192.0.2.7 (an address alone is /32 or
    /// /128). The header is v1 text or v2 binary, TLVs skipped, as HAProxy's send-proxy and
    /// send-proxy-v2, an AWS NLB or nginx's stream proxy_protocol on send it. It is read
    /// before anything else (peeked, then exactly its bytes taken, so nothing after it is
    /// lost) and never forwarded. The client it names is the one the per-client limits
    /// count, serve's access log shows and a header sent with -p names; a v2 LOCAL, a v1
    /// UNKNOWN or a Unix-socket client leaves the balancer's own address. A missing,
    /// malformed, truncated or over-long header, or one not complete within 3 s, closes the
    /// connection (counted in ringsock_proxy_protocol_refused_total). Connections
    /// from anyone else never have a header parsed: their first bytes are their own.
    /// Parsing is the ppp crate's.
    #[arg(long, value_name = "CIDR", value_parser = str::parse::<IpRange>)]
    pub proxy_protocol_from: Vec<IpRange>,

    /// Every connection on the activated socket named NAME (FileDescriptorName=) starts
    /// with a PROXY protocol header, whoever the peer (repeatable)
    ///
    /// The header is read and taken off as for --proxy-protocol-from. A --listen socket is
    /// named by its address. A NAME that no socket has is an error at start that lists the
    /// names received: a typo would leave a balancer's headers to be read as requests.
    #[arg(long, value_name = "NAME")]
    pub proxy_protocol_on: Vec<String>,

    /// At most N connections at once from one client address range (the client a PROXY
    /// header names, if any); more are closed as soon as they are accepted [default: no limit]
    ///
    /// USTC's mirror publishes 12 per /29 and per /64: --per-client-connections 12
    /// --per-client-ipv4-prefix 29 --per-client-ipv6-prefix 64. That keeps one download
    /// accelerator, or a crowd of slow clients from one network, from taking every
    /// connection and the disk's IOPS. The count is exact across workers: one table for the
    /// process, sharded by prefix so that workers rarely meet on a lock. An excess
    /// connection is closed right after it is accepted (and after the PROXY header of a
    /// trusted balancer), before any request byte is read: nothing is spent on it, and the
    /// client sees in effect the refusal nginx's limit_conn gives, without a request being
    /// parsed first. A range is in the table only while it has a connection open, so a flood
    /// of distinct addresses cannot grow it beyond --connections-max entries. /metrics
    /// shows ringsock_per_client_refused_total and ringsock_per_client_ranges.
    #[arg(long, value_name = "N", value_parser = values::per_client_max)]
    pub per_client_connections: Option<u32>,

    /// The IPv4 prefix length that makes one client for --per-client-connections (e.g. 29)
    ///
    /// 0 to 32; serve's --per-client-rate uses it too.
    #[arg(
        long,
        value_name = "LEN",
        default_value_t = 32,
        value_parser = value_parser!(u8).range(0..=32)
    )]
    pub per_client_ipv4_prefix: u8,

    /// The IPv6 prefix length that makes one client for --per-client-connections (e.g. 64)
    ///
    /// 0 to 128; serve's --per-client-rate uses it too.
    #[arg(
        long,
        value_name = "LEN",
        default_value_t = 128,
        value_parser = value_parser!(u8).range(0..=128)
    )]
    pub per_client_ipv6_prefix: u8,
}

impl CommonArgs {
    /// Every value was checked by its parser: nothing here can fail. `rate` is serve's.
    pub(super) fn into_common(self, rate: Option<Rate>) -> Common {
        Common {
            listen: self.listen,
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            connections_max: self
                .connections_max
                .map_or(ConnectionsMax::Default, ConnectionsMax::Given),
            exit_idle_time: self.exit_idle_time,
            shutdown_timeout: self.shutdown_timeout,
            log_level: self.log_level,
            admission: Admission {
                trusted: TrustedPeers::new(self.proxy_protocol_from),
                header_required: self.proxy_protocol_on,
                prefixes: Prefixes {
                    ipv4: self.per_client_ipv4_prefix,
                    ipv6: self.per_client_ipv6_prefix,
                },
                per_client_max: self.per_client_connections,
                rate,
            },
        }
    }
}
