//! `ringsock serve`'s own flags: the tree to serve, HTTP timeouts, I/O threads, the
//! request rate per client and the access log.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::values;
use super::CommonArgs;

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
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "10s",
        value_parser = values::finite_timespan
    )]
    pub header_timeout: Duration,

    /// Close an idle keep-alive connection after this long
    ///
    /// Also how long a client may read nothing while a response is being sent, after which
    /// the connection is ended. The same as nginx's keepalive_timeout.
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "60s",
        value_parser = values::finite_timespan
    )]
    pub keepalive_timeout: Duration,

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
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = values::io_threads)]
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
    #[arg(long, value_name = "R", value_parser = values::per_second)]
    pub per_client_rate: Option<u32>,

    /// Requests a client may make at once above --per-client-rate [default: R]
    ///
    /// The size of each token bucket: a client that has been quiet may send this many
    /// requests at once. At least 1; needs --per-client-rate.
    #[arg(long, value_name = "N", value_parser = values::at_least_one::<u32>)]
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

    /// Pass requests whose path starts with PREFIX to the HTTP server at TARGET
    /// (repeatable; the longest prefix wins)
    ///
    /// TARGET as for proxy: /path/to.sock, @abstract, HOST:PORT. The path is matched
    /// decoded (/%61pi/ is /api/), and passed on as sent, as nginx's proxy_pass without a
    /// URI does. What nginx users put in front of aptly: --root ~/.aptly/public --route
    /// /api/=/home/archive/aptly.sock serves the published tree and the API on one port.
    /// A route wins over the server's own /api/version and /metrics when it covers them.
    /// Requests go as HTTP/1.1 on connections kept alive per worker (up to 64 idle per
    /// route, closed after 60 s unused); one that fails on a reused connection before any
    /// answer came is sent again once on a new one, if it is idempotent and has no body.
    /// Bodies are streamed both ways, never buffered whole (spliced when large);
    /// hop-by-hop headers are dropped both ways; X-Forwarded-For, X-Real-IP (the client a
    /// trusted PROXY header names, if any) and X-Forwarded-Proto are set, never appended
    /// to. A backend that is not there is 502, one that does not answer within
    /// --route-timeout 504, an answer that breaks off midway cuts the client's connection.
    #[arg(long = "route", value_name = "PREFIX=TARGET", value_parser = values::route)]
    pub routes: Vec<(String, crate::proxy::Target)>,

    /// Only clients in CIDR may use the route PREFIX (repeatable); others get 403
    ///
    /// Checked before anything else about the request, credentials included; the client
    /// is the one a trusted PROXY header names, if any. A client on a Unix socket has no
    /// address and is refused.
    #[arg(long, value_name = "PREFIX=CIDR", value_parser = values::route_allow)]
    pub route_allow: Vec<(String, crate::admission::networks::IpRange)>,

    /// Only users of the htpasswd FILE may use the route PREFIX: HTTP Basic, 401 without
    /// the right credentials
    ///
    /// The file as Apache's htpasswd writes it and nginx's auth_basic_user_file reads it:
    /// bcrypt ($2y$, htpasswd -B), SHA-crypt ($5$, $6$: openssl passwd -6, mkpasswd) and
    /// $apr1$ (htpasswd's default). The realm is PREFIX. Checked after --route-allow and
    /// before the body is read. A password is verified on an I/O thread, never a worker
    /// (bcrypt takes tens of ms); a right one is remembered for 60 s under a keyed hash
    /// (never the password), so a script's upload, add and publish pay for one check.
    /// After 10 failures from one address (an IPv6 /64) in a minute, more are answered
    /// 429 with Retry-After, and checked no more; when the checks in flight are at their
    /// bound (a quarter of --io-threads, 1 to 8) the answer is 503. Credentials checked
    /// here are not passed to the backend. SIGHUP (systemctl reload) reads the file again;
    /// one that fails to parse keeps the users in force and logs why. The access log shows
    /// the user; ringsock_auth_checks_total counts the outcomes.
    #[arg(long, value_name = "PREFIX=FILE", value_parser = values::route_auth)]
    pub route_auth: Vec<(String, std::path::PathBuf)>,

    /// The largest request body a route passes on; larger ones get 413 [default: 2g]
    ///
    /// Bytes, or with k, m or g. Bodies are streamed, so size costs no memory; the limit
    /// bounds what an allowed client can make the backend store. 2 GiB takes any package
    /// a Debian archive has (nginx's default of 1m is what aptly users always raise).
    #[arg(long, value_name = "SIZE", default_value = "2g", value_parser = values::size)]
    pub route_max_body: u64,

    /// How long a route's backend may take to accept a connection, and to start its
    /// answer (504 after)
    ///
    /// nginx's proxy_connect_timeout and proxy_read_timeout, 60 s by default there too;
    /// also how long the backend may refuse request body bytes. Raise it for aptly
    /// publishes of large repositories, which answer only when done.
    #[arg(
        long,
        value_name = "TIMESPAN",
        default_value = "60s",
        value_parser = values::finite_timespan
    )]
    pub route_timeout: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}
