//! Command-line flags (clap) and their validation into a [`Config`] before anything runs.
//!
//! `proxy` keeps systemd-socket-proxyd's flags and TARGET syntax, so replacing the
//! `ExecStart=` line is all a migration takes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admission::client::{ClientRules, PerClient, Prefixes, RequestRate};
use crate::admission::proxy_header::{self, TrustedPeers};
use crate::log::Level;
use crate::proxy::Targets;
use crate::runtime::{ConnectionsMax, Lifecycle};
use crate::systemd::activation::ListenAddr;

#[derive(Parser, Debug)]
#[command(name = "ringsock", version, propagate_version = true)]
#[command(about = "Socket-activated io_uring forwarder and HTTP/1.1 mirror server")]
#[command(
    long_about = "Socket-activated io_uring forwarder and HTTP/1.1 mirror server.\n\n\
    Runs on the listening sockets systemd passes (socket activation), or on --listen addresses."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Forward every connection to TARGET (a drop-in for systemd-socket-proxyd)
    ///
    /// Takes systemd-socket-proxyd's flags (-c/--connections-max, --exit-idle-time, -p),
    /// its TARGET syntax and its exit codes, so replacing the ExecStart= line of its unit is
    /// the whole migration. Each connection accepted on the activated sockets (or on
    /// --listen addresses) is connected to TARGET and forwarded both ways at once: small
    /// messages with a receive and a send, bulk transfers socket to pipe to socket with
    /// splice(2), zero-copy.
    ///
    /// Half-close is kept: EOF from one side becomes shutdown(SHUT_WR) on the other once
    /// every earlier byte was delivered, and the connection ends when both directions did.
    /// When either side resets, both are cut with RST, so nobody mistakes a cut stream for a
    /// complete one. A side that only stops reading (a backend that answers early and
    /// closes while the client is still uploading) does not cut what it sent: that
    /// direction runs to its end, and the other side gets up to 30 s to read what it was
    /// sent before the RST. A Unix-socket side, which has no RST, is closed at once with
    /// what it sent left unread, so it reads ECONNRESET rather than EOF if it had sent bytes
    /// ringsock had not read. What clients notice against systemd-socket-proxyd: half-closed
    /// requests get their replies, -c is exact (extra clients wait instead of being
    /// refused), and a stop lets open requests finish.
    ///
    /// TIMESPAN values are systemd time spans: 500ms, 30s, 5min, 1h 30s (a bare number is
    /// seconds; units us, ms, s, min, h, d, w), or infinity where the flag allows it.
    Proxy(ProxyArgs),
    /// Serve the aptly-compatible API, metrics and a mirror tree over HTTP/1.1
    ///
    /// Serves on the activated sockets and on --listen addresses, or else on 127.0.0.1:8080.
    /// GET /api/version answers {"Version":"X.Y.Z"} with Content-Type: application/json;
    /// charset=utf-8, exactly as aptly does (no trailing newline). GET /metrics answers the
    /// Prometheus text format: ringsock_connections_accepted_total,
    /// ringsock_connections_open, ringsock_connections_max,
    /// ringsock_connections_waiting_for_fds, ringsock_http_responses_total by status class
    /// (code="2xx"...), ringsock_http_response_bytes_total; what went to the I/O threads
    /// (ringsock_http_file_opens_offloaded_total, ringsock_http_file_sends_offloaded_total,
    /// ringsock_http_file_bytes_offloaded_total, ringsock_io_threads,
    /// ringsock_io_threads_busy, ringsock_io_queue_length); the histogram
    /// ringsock_http_request_duration_seconds, from a head's first byte to its answer (the
    /// body sent, for files), 100 us to 60 s; ringsock_proxy_protocol_refused_total; and the
    /// counters of --per-client-connections, --per-client-rate and --access-log when those
    /// are given. These two paths win over files of the same name.
    ///
    /// The tree under --root is served with GET and HEAD: Debian content types,
    /// Last-Modified and ETag; If-None-Match and If-Modified-Since give 304 (the date must
    /// equal Last-Modified, as with nginx's default if_modified_since exact, so a file
    /// replaced by an older one is sent again); If-Match and If-Unmodified-Since give 412;
    /// a single Range, with If-Range, gives 206 or 416. Files of any size; bodies are sent
    /// with sendfile(2) on write readiness. Paths never leave the root
    /// (openat2(RESOLVE_BENEATH), or a walk one component at a time that decides each
    /// symlink by where it leads); a symlink leading outside it is 403 unless
    /// --follow-symlinks, a directory 403 unless --autoindex, and FIFOs, sockets and devices
    /// 403 by their type. A worker never waits for the disk: what is not in the kernel's
    /// caches is opened and sent by I/O threads (--io-threads).
    ///
    /// HTTP/1.1 keep-alive and pipelining (answered in order). Bad input gets 400, 414, 431,
    /// 501, 405 or 505 and never takes a worker down. Request bodies on GET and HEAD,
    /// Content-Length together with Transfer-Encoding, a transfer coding other than a final
    /// chunked, an invalid Host and a request line that is not exactly METHOD TARGET
    /// HTTP/1.x are refused (400, then close); HTTP/1.2 and later minors are read as
    /// HTTP/1.1. A head may have 16 KiB and 64 header lines (else 431), a target 8 KiB
    /// (else 414). Out of file descriptors, a request for a file gets 503 with Retry-After:
    /// 1 and the connection closes. On SIGTERM, responses in flight finish and idle
    /// connections close.
    ///
    /// TIMESPAN values are systemd time spans: 500ms, 30s, 5min, 1h 30s (a bare number is
    /// seconds; units us, ms, s, min, h, d, w), or infinity where the flag allows it.
    Serve(ServeArgs),
}

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
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Worker threads [default: the CPUs this process may use]
    ///
    /// Each worker runs its own runtime (io_uring, else epoll) and accepts on its own copy
    /// of every listening socket, so the kernel spreads the connections and nothing on the
    /// data path crosses threads.
    #[arg(long, value_name = "N")]
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
    #[arg(short = 'c', long, value_name = "N")]
    pub connections_max: Option<usize>,

    /// Exit once no connection was open for this long (e.g. 30s, 5min, infinity)
    ///
    /// The exit status is 0. Connections to the proxy's metrics socket do not count.
    #[arg(long, value_name = "TIMESPAN", default_value = "infinity")]
    pub exit_idle_time: String,

    /// On SIGTERM/SIGINT, how long open connections may take to finish
    ///
    /// Accepting stops at once: a --listen socket is closed, so its new clients are
    /// refused, while an activated one stays with the service manager, which queues them
    /// for the next start. When this time is up, or at a second SIGTERM or SIGINT, the
    /// connections still open are cut (TCP ones with RST, so no client takes a truncated
    /// stream for a complete one) and ringsock exits 0. The shipped units set
    /// TimeoutStopSec=45s, above the default.
    #[arg(long, value_name = "TIMESPAN", default_value = "30s")]
    pub shutdown_timeout: String,

    /// error, warning, info or debug [default: $RINGSOCK_LOG_LEVEL, $SYSTEMD_LOG_LEVEL, info]
    ///
    /// Log lines go to standard error, with syslog priority prefixes when journald reads
    /// them (JOURNAL_STREAM), so journalctl -p warning shows only the driver fallback,
    /// accept errors and failures. debug adds detail such as aborted connections.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

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
    #[arg(long, value_name = "CIDR")]
    pub proxy_protocol_from: Vec<String>,

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
    #[arg(long, value_name = "N")]
    pub per_client_connections: Option<u32>,

    /// The IPv4 prefix length that makes one client for --per-client-connections (e.g. 29)
    ///
    /// 0 to 32; serve's --per-client-rate uses it too.
    #[arg(long, value_name = "LEN", default_value_t = 32)]
    pub per_client_ipv4_prefix: u8,

    /// The IPv6 prefix length that makes one client for --per-client-connections (e.g. 64)
    ///
    /// 0 to 128; serve's --per-client-rate uses it too.
    #[arg(long, value_name = "LEN", default_value_t = 128)]
    pub per_client_ipv6_prefix: u8,
}

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
    #[arg(long, value_name = "TIMESPAN", default_value = "10s")]
    pub connect_timeout: String,

    /// Cut a connection that one side half-closed once nothing moved on it for this long
    /// (infinity: never)
    ///
    /// Cut means RST, as HAProxy's timeout client-fin and server-fin; 10 min is nginx's
    /// proxy_timeout. Before that, once one direction ended, the side that sent the EOF is
    /// looked at every second: when it has closed completely (POLLHUP: a Unix backend that
    /// closed, as an HTTP server closing an idle keep-alive connection) and nothing is in
    /// flight to it, the connection ends, as with systemd-socket-proxyd. A TCP peer that
    /// closed completely refuses the next write, which ends it too.
    #[arg(long, value_name = "TIMESPAN", default_value = "10min")]
    pub half_close_timeout: String,

    /// Cut (RST both sides) a connection on which no byte moved either way for this long
    ///
    /// So a vanished client cannot hold a backend, and what it locked, forever
    /// (systemd-socket-proxyd #23320). At infinity, the default, no timer runs at all.
    /// Counted in ringsock_proxy_idle_timeouts_total.
    #[arg(long, value_name = "TIMESPAN", default_value = "infinity")]
    pub idle_timeout: String,

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
        default_missing_value = "v1"
    )]
    pub proxy_protocol: Option<String>,

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
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory to serve (e.g. aptly's rootDir/public); without it only the API answers
    ///
    /// A root that cannot be opened is an error at start. On a network or FUSE file system
    /// every file is opened and sent by I/O threads, and the log says so at start.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Close a client that has not sent a full request head within this long (408)
    ///
    /// The same as nginx's client_header_timeout.
    #[arg(long, value_name = "TIMESPAN", default_value = "10s")]
    pub header_timeout: String,

    /// Close an idle keep-alive connection after this long
    ///
    /// Also how long a client may read nothing while a response is being sent, after which
    /// the connection is ended. The same as nginx's keepalive_timeout.
    #[arg(long, value_name = "TIMESPAN", default_value = "60s")]
    pub keepalive_timeout: String,

    /// Serve symlinks that point outside --root
    ///
    /// Without it such a link is 403, decided by where the link says it leads, before
    /// anything it points to is opened; links that stay inside the root are always
    /// followed. With it, serve behaves as nginx with disable_symlinks off, its default.
    #[arg(long)]
    pub follow_symlinks: bool,

    /// List directories as HTML instead of answering 403
    ///
    /// nginx's autoindex on. A directory asked for without its trailing slash is redirected
    /// (301) to it; the listing is made on an I/O thread.
    #[arg(long)]
    pub autoindex: bool,

    /// Most threads opening and reading files that are not in the page cache (nginx's
    /// `aio threads`); cached files never wait for one
    ///
    /// nginx's pool also has 32. Threads start on demand and end after a minute idle; they
    /// run at SCHED_BATCH and nice 10, so that a worker's small answers win the CPU from
    /// bulk copies. An I/O thread sends with one sendfile(2) on the non-blocking socket, so
    /// a slow client holds no thread while it is not reading; a read that hangs (a FUSE or
    /// NFS server that never answers) holds one I/O thread, never a worker, and the
    /// connection is ended after --keepalive-timeout. At least 1. ringsock_io_threads,
    /// ringsock_io_threads_busy and ringsock_io_queue_length in /metrics show the pool.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub io_threads: usize,

    /// At most R requests a second from one client address range (prefixes as for
    /// --per-client-connections); more are answered 429 with Retry-After [default: no limit]
    ///
    /// A token bucket per range, as nginx's limit_req: a request over the rate is answered
    /// 429 Too Many Requests with Retry-After: 1, and the connection stays open. R is a whole
    /// number, or R/s. USTC's mirror allows 40 a second with bursts of 100:
    /// --per-client-rate 40 --per-client-burst 100. The buckets use the same prefixes and
    /// sharding as --per-client-connections; when the table fills, clients that have been
    /// quiet long enough to be owed nothing are dropped from it, and past 65,536 active
    /// ranges a new one goes unlimited rather than the table growing. Counted in
    /// ringsock_per_client_rate_limited_total.
    #[arg(long, value_name = "R")]
    pub per_client_rate: Option<String>,

    /// Requests a client may make at once above --per-client-rate [default: R]
    ///
    /// The size of each token bucket: a client that has been quiet may send this many
    /// requests at once. At least 1; needs --per-client-rate.
    #[arg(long, value_name = "N")]
    pub per_client_burst: Option<u32>,

    /// Write an access log line per response (nginx's combined format plus the request
    /// time) to PATH, or `-` for standard error; SIGUSR1 reopens it (logrotate)
    ///
    /// Every response gets a line, errors, 408s and rejected heads included:
    /// $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
    /// "$http_user_agent" $request_time, what mirror operators' traffic statistics and abuse
    /// tools read from nginx. $remote_addr is the client a trusted PROXY header names, if
    /// any. Quotes, backslashes and control bytes in the request line and headers are
    /// written \xHH, as nginx does, so a hostile header cannot forge a line; a request line,
    /// Referer or User-Agent is cut at 2048 bytes (and ends in ...).
    ///
    /// A line costs no syscall: each worker appends to its own buffer, which goes to the
    /// file as one write(2) of whole lines on an I/O thread (a slow or full disk never
    /// blocks a worker) at 32 KiB, once a second, and when the worker stops, so lines are
    /// never torn or interleaved and none are lost on SIGTERM. The .deb ships
    /// /etc/logrotate.d/ringsock (daily, 14 kept, compressed; its postrotate sends SIGUSR1),
    /// and the serve unit has LogsDirectory=ringsock for /var/log/ringsock/access.log. A path
    /// that cannot be opened or written is a warning (a failing write at most once a minute)
    /// and its lines are counted in ringsock_access_log_lines_lost_total; answers go on.
    /// Lines written are counted in ringsock_access_log_lines_total.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// Validated settings shared by every subcommand.
#[derive(Debug)]
pub struct Common {
    pub listen: Vec<ListenAddr>,
    pub lifecycle: Lifecycle,
    pub log_level: Option<Level>,
    /// `--proxy-protocol-from` and `--per-client-*`.
    pub clients: Arc<ClientRules>,
    /// `--proxy-protocol-on`: the sockets whose every connection starts with a header.
    pub header_required: Vec<String>,
}

pub type ProxyConfig = crate::proxy::Settings;

#[derive(Debug)]
pub struct ServeConfig {
    pub root: Option<PathBuf>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub follow_symlinks: bool,
    pub autoindex: bool,
    pub access_log: Option<String>,
}

#[derive(Debug)]
pub enum Config {
    Proxy(Common, ProxyConfig),
    Serve(Common, ServeConfig),
}

impl Cli {
    /// Turns raw flags into a [`Config`]; the error names the flag and the fix.
    pub fn validate(self) -> Result<Config, String> {
        Ok(match self.command {
            Command::Proxy(args) => {
                let common =
                    args.common
                        .validate(FDS_PER_PROXIED_CONNECTION, PROXY_IO_THREADS, None)?;
                let proxy = ProxyConfig {
                    target: Targets::parse(&args.target)?,
                    connect_timeout: finite("--connect-timeout", &args.connect_timeout)?,
                    half_close_timeout: timespan("--half-close-timeout", &args.half_close_timeout)?,
                    idle_timeout: timespan("--idle-timeout", &args.idle_timeout)?,
                    keepalive: args.keepalive,
                    clients: common.clients.clone(),
                    counters: Arc::default(),
                    metrics_listen: args
                        .metrics
                        .as_deref()
                        .map(|text| ListenAddr::parse(text).map_err(|e| format!("--metrics: {e}")))
                        .transpose()?,
                    send_header: args
                        .proxy_protocol
                        .as_deref()
                        .map(proxy_header::Version::parse)
                        .transpose()?,
                };
                Config::Proxy(common, proxy)
            }
            Command::Serve(args) => Config::Serve(
                args.common.validate(
                    FDS_PER_HTTP_CONNECTION,
                    io_threads(args.io_threads)?,
                    rate_limit(args.per_client_rate.as_deref(), args.per_client_burst)?,
                )?,
                ServeConfig {
                    root: args.root,
                    header_timeout: finite("--header-timeout", &args.header_timeout)?,
                    keepalive_timeout: finite("--keepalive-timeout", &args.keepalive_timeout)?,
                    follow_symlinks: args.follow_symlinks,
                    autoindex: args.autoindex,
                    access_log: args.access_log,
                },
            ),
        })
    }
}

/// File descriptors one connection holds at most: the client and the target socket,
/// and a pipe end's share while splicing...
const FDS_PER_PROXIED_CONNECTION: usize = 3;
/// ...or the client socket, the file being sent, and the socket's duplicate an I/O
/// thread holds while it sends from the disk.
const FDS_PER_HTTP_CONNECTION: usize = 3;
/// The proxy's only blocking calls are host-name lookups of TARGET.
const PROXY_IO_THREADS: usize = 4;

/// `--per-client-rate R` (or `R/s`) and `--per-client-burst N`.
fn rate_limit(rate: Option<&str>, burst: Option<u32>) -> Result<Option<RequestRate>, String> {
    let Some(text) = rate else {
        return match burst {
            Some(_) => Err("--per-client-burst needs --per-client-rate".into()),
            None => Ok(None),
        };
    };
    let per_second = match text.strip_suffix("/s").unwrap_or(text).parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(format!(
                "--per-client-rate {text:?}: give requests per second as a whole number, e.g. 40 or 40/s"
            ))
        }
    };
    match burst {
        Some(0) => Err("--per-client-burst must be at least 1".into()),
        burst => Ok(Some(RequestRate::new(
            per_second,
            burst.unwrap_or(per_second),
        ))),
    }
}

fn io_threads(n: usize) -> Result<usize, String> {
    match n {
        0 => Err(
            "--io-threads must be at least 1: files that are not cached need a thread to \
                  be read without stalling a worker"
                .into(),
        ),
        n => Ok(n),
    }
}

impl CommonArgs {
    fn validate(
        self,
        fds_per_connection: usize,
        io_threads: usize,
        rate: Option<RequestRate>,
    ) -> Result<Common, String> {
        let per_client = self.per_client()?;
        let connections_max = match self.connections_max {
            Some(0) => return Err("--connections-max must be at least 1".into()),
            Some(n) => ConnectionsMax::Given(n),
            None => ConnectionsMax::Default,
        };
        let threads = match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let listen = self
            .listen
            .iter()
            .map(|text| ListenAddr::parse(text).map_err(|e| format!("--listen: {e}")))
            .collect::<Result<_, _>>()?;
        let log_level = match self.log_level {
            None => None,
            Some(text) => Some(Level::parse(&text).ok_or_else(|| {
                format!("--log-level {text:?}: use error, warning, info or debug")
            })?),
        };
        let clients = Arc::new(ClientRules {
            trusted: TrustedPeers::parse(&self.proxy_protocol_from)?,
            prefixes: Prefixes {
                ipv4: self.per_client_ipv4_prefix,
                ipv6: self.per_client_ipv6_prefix,
            },
            per_client,
            rate,
            ..ClientRules::default()
        });
        Ok(Common {
            clients,
            header_required: self.proxy_protocol_on,
            listen,
            lifecycle: Lifecycle {
                threads,
                connections_max,
                fds_per_connection,
                exit_idle_time: timespan("--exit-idle-time", &self.exit_idle_time)?,
                shutdown_timeout: timespan("--shutdown-timeout", &self.shutdown_timeout)?,
                io_threads,
            },
            log_level,
        })
    }
}

impl CommonArgs {
    fn per_client(&self) -> Result<Option<PerClient>, String> {
        if self.per_client_ipv4_prefix > 32 {
            return Err("--per-client-ipv4-prefix must be 0 to 32".into());
        }
        if self.per_client_ipv6_prefix > 128 {
            return Err("--per-client-ipv6-prefix must be 0 to 128".into());
        }
        Ok(match self.per_client_connections {
            None => None,
            Some(0) => {
                return Err(
                    "--per-client-connections must be at least 1 (leave it out for no limit)"
                        .into(),
                )
            }
            Some(max) => Some(PerClient::new(max)),
        })
    }
}

fn timespan(flag: &str, text: &str) -> Result<Option<Duration>, String> {
    crate::systemd::timespan::parse(text).map_err(|e| format!("{flag}: {e}"))
}

fn finite(flag: &str, text: &str) -> Result<Duration, String> {
    timespan(flag, text)?.ok_or_else(|| format!("{flag} cannot be infinity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("ringsock").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.validate()
    }

    #[test]
    fn proxy_takes_systemd_socket_proxyd_flags() {
        let Ok(Config::Proxy(common, proxy)) = parse(&[
            "proxy",
            "-c",
            "10",
            "--exit-idle-time",
            "5min",
            "/run/aptly.sock",
        ]) else {
            panic!("should parse");
        };
        assert_eq!(common.lifecycle.connections_max, ConnectionsMax::Given(10));
        assert_eq!(
            common.lifecycle.exit_idle_time,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            proxy.target,
            Targets::Single(crate::proxy::Target::Path("/run/aptly.sock".into()))
        );
        assert_eq!(proxy.connect_timeout, Duration::from_secs(10));
        assert_eq!(proxy.half_close_timeout, Some(Duration::from_secs(600)));
    }

    #[test]
    fn defaults_match_systemd_socket_proxyd_but_the_connection_limit() {
        let Ok(Config::Proxy(common, _)) = parse(&["proxy", "127.0.0.1:80"]) else {
            panic!("should parse");
        };
        // systemd-socket-proxyd's 256 lets 256 idle clients lock everyone out.
        assert_eq!(common.lifecycle.connections_max, ConnectionsMax::Default);
        assert_eq!(common.lifecycle.exit_idle_time, None);
        assert!(common.lifecycle.threads >= 1);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        assert!(parse(&["proxy", "-c", "0", "x:1"])
            .unwrap_err()
            .contains("--connections-max"));
        assert!(parse(&["proxy", "--threads", "0", "x:1"])
            .unwrap_err()
            .contains("--threads"));
        assert!(parse(&["proxy", "--exit-idle-time", "soon", "x:1"])
            .unwrap_err()
            .contains("--exit-idle-time"));
        assert!(parse(&["proxy", "--connect-timeout", "infinity", "x:1"])
            .unwrap_err()
            .contains("infinity"));
        assert!(parse(&["proxy", "--listen", "nowhere", "x:1"])
            .unwrap_err()
            .contains("--listen"));
        assert!(parse(&["proxy", "--log-level", "loud", "x:1"])
            .unwrap_err()
            .contains("--log-level"));
        assert!(parse(&["proxy"]).is_err());
        assert!(parse(&["proxy", "a:1", "b:2"]).is_err());
    }
}
