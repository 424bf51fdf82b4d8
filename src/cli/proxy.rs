//! `ringsock proxy`'s own flags: TARGET, the timeouts of a forwarded connection, the
//! PROXY header it sends, and its metrics socket.

use std::time::Duration;

use clap::Args;

use super::values::{self, Timespan};
use super::CommonArgs;
use crate::admission::proxy_header::Version;
use crate::systemd::activation::ListenAddr;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Where to forward: HOST:PORT, HOST (port 80), [V6]:PORT, /path/to.sock or @abstract;
    /// or NAME=TARGET per activated socket (FileDescriptorName=), several of them
    ///
    /// /path/to.sock is a Unix socket (the path must be absolute), @name a Unix socket in
    /// the abstract namespace. HOST:PORT and HOST are TCP; a host name is looked up with the
    /// system resolver as connections come in (each worker reuses an answer for a second,
    /// and connections that arrive during a lookup wait for it), each address tried in turn
    /// when one refuses. [V6]:PORT and V6:PORT are TCP over IPv6 (::1:80 splits at the last
    /// colon, as systemd does).
    ///
    /// With NAME=TARGET (NAME is [A-Za-z0-9_.-]+) the connections of the socket named NAME
    /// go to TARGET: give each ListenStream= its own socket unit, or one socket unit several
    /// FileDescriptorName= names (a --listen socket is named by its address). A single
    /// TARGET forwards every socket there, as systemd-socket-proxyd does. A name with no
    /// socket, or a socket with no target, is an error at start that lists the names
    /// received. A socket named metrics that no NAME=TARGET claims answers metrics.
    #[arg(value_name = "TARGET", num_args = 1.., required = true)]
    pub target: Vec<String>,

    /// Give up connecting to TARGET after this long and close the client
    ///
    /// The client is reset (RST), so it cannot mistake "no backend" for an empty reply. Out
    /// of file descriptors, a client is not reset: it waits, the connect retried within
    /// this time, while accepting stops, so that the next clients wait in the backlog as at
    /// --connections-max; each worker keeps one fd in reserve so that one waiting connection
    /// always goes on and, when it closes, gives fds back to the others. The log says so
    /// once: "out of file descriptors connecting to TARGET ...; new clients wait in the
    /// listen backlog".
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "10s",
        value_parser = values::finite_timespan
    )]
    pub connect_timeout: Duration,

    /// Cut a connection that one side half-closed once nothing moved on it for this long
    /// (infinity: never)
    ///
    /// Cut means RST, as HAProxy's timeout client-fin and server-fin; 10 min is nginx's
    /// proxy_timeout. Before that, once one direction ended, the side that sent the EOF is
    /// looked at every second: when it has closed completely (POLLHUP: a Unix backend that
    /// closed, as an HTTP server closing an idle keep-alive connection) and nothing is in
    /// flight to it, the connection ends, as with systemd-socket-proxyd. A TCP peer that
    /// closed completely refuses the next write, which ends it too.
    #[arg(long, value_name = "TIMESPAN", default_value = "10min", value_parser = values::timespan)]
    pub half_close_timeout: Timespan,

    /// Cut (RST both sides) a connection on which no byte moved either way for this long
    ///
    /// So a vanished client cannot hold a backend, and what it locked, forever
    /// (systemd-socket-proxyd #23320). At infinity, the default, no timer runs at all.
    /// Counted in ringsock_proxy_idle_timeouts_total.
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "infinity",
        value_parser = values::timespan
    )]
    pub idle_timeout: Timespan,

    /// Turn on TCP keepalive (probes after 60 s idle, every 10 s, 6 of them) on client and
    /// TCP target sockets, so a peer that vanished is noticed
    ///
    /// A peer that answers none of the 6 probes is dropped, and its connection cut.
    #[arg(long)]
    pub keepalive: bool,

    /// Send a PROXY protocol header (v1, as systemd-socket-proxyd's -p, or v2) naming the
    /// client to TARGET before any of its bytes
    ///
    /// Given alone it sends v1, the line PROXY TCP4|TCP6 CLIENT LISTENER CPORT LPORT (PROXY
    /// UNKNOWN for a client that is not IP, e.g. on a Unix listener), as haproxy's
    /// proxy-protocol.txt has it; --proxy-protocol=v2 sends the binary form (the Unix-stream
    /// family for a Unix-socket client). VERSION needs the = form. Behind a balancer
    /// (--proxy-protocol-from) the header names the original client, not the balancer. A
    /// real HAProxy with accept-proxy behind ringsock sees the client's address (tested, v1
    /// and v2).
    #[arg(
        short = 'p',
        long,
        value_name = "VERSION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "v1",
        value_parser = values::proxy_version
    )]
    pub proxy_protocol: Option<Version>,

    /// Answer Prometheus metrics on ADDR (HOST:PORT, /path, @name); an activated socket
    /// named `metrics` does the same
    ///
    /// Every path is answered with the metrics, then the connection closes; a scraper has
    /// 5 s to send its request and to take the answer. Scrapes have a limit of their own
    /// (16 at once, more wait in the backlog), so they are answered when the proxy is at -c
    /// and take no client's slot; they are not counted as connections, nor as activity for
    /// --exit-idle-time. Exported: ringsock_connections_accepted_total,
    /// ringsock_connections_open, ringsock_connections_max,
    /// ringsock_connections_waiting_for_fds; the I/O pool's ringsock_io_threads,
    /// ringsock_io_threads_busy and ringsock_io_queue_length;
    /// ringsock_proxy_connect_failures_total by cause (refused, timeout, resolve, other),
    /// ringsock_proxy_resets_total, ringsock_proxy_idle_timeouts_total,
    /// ringsock_proxy_bytes_total by direction (to_target, to_client) and
    /// ringsock_proxy_spliced_bytes_total, bytes counted as they are delivered, so a long
    /// transfer shows while it runs; ringsock_proxy_protocol_refused_total, and the
    /// counters of --per-client-connections when it is given. The connection counts and
    /// bytes also go to STATUS= (systemctl status), refreshed at most once a second.
    #[arg(long, value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub metrics: Option<ListenAddr>,

    #[command(flatten)]
    pub common: CommonArgs,
}
