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
    Proxy(ProxyArgs),
    /// Serve the aptly-compatible API, metrics and a mirror tree over HTTP/1.1
    Serve(ServeArgs),
}

/// Flags every subcommand shares: where to listen, workers, limits, lifecycle, logging.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Listen on ADDR when not socket-activated: HOST:PORT, [V6]:PORT, PORT, /path or @name
    /// (repeatable)
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Worker threads [default: the CPUs this process may use]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Maximum simultaneous connections; more wait in the listen backlog [default: 16384,
    /// or fewer if the open file limit cannot hold that many]
    #[arg(short = 'c', long, value_name = "N")]
    pub connections_max: Option<usize>,

    /// Exit once no connection was open for this long (e.g. 30s, 5min, infinity)
    #[arg(long, value_name = "TIMESPAN", default_value = "infinity")]
    pub exit_idle_time: String,

    /// On SIGTERM/SIGINT, how long open connections may take to finish
    #[arg(long, value_name = "TIMESPAN", default_value = "30s")]
    pub shutdown_timeout: String,

    /// error, warning, info or debug [default: $RINGSOCK_LOG_LEVEL, $SYSTEMD_LOG_LEVEL, info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Connections from ADDR[/LEN] (a load balancer) start with a PROXY protocol v1 or v2
    /// header naming the real client; one without a valid header within 3 s is closed
    /// (repeatable)
    #[arg(long, value_name = "CIDR")]
    pub proxy_protocol_from: Vec<String>,

    /// Every connection on the activated socket named NAME (FileDescriptorName=) starts
    /// with a PROXY protocol header, whoever the peer (repeatable)
    #[arg(long, value_name = "NAME")]
    pub proxy_protocol_on: Vec<String>,

    /// At most N connections at once from one client address range (the client a PROXY
    /// header names, if any); more are closed as soon as they are accepted [default: no limit]
    #[arg(long, value_name = "N")]
    pub per_client_connections: Option<u32>,

    /// The IPv4 prefix length that makes one client for --per-client-connections (e.g. 29)
    #[arg(long, value_name = "LEN", default_value_t = 32)]
    pub per_client_ipv4_prefix: u8,

    /// The IPv6 prefix length that makes one client for --per-client-connections (e.g. 64)
    #[arg(long, value_name = "LEN", default_value_t = 128)]
    pub per_client_ipv6_prefix: u8,
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Where to forward: HOST:PORT, HOST (port 80), [V6]:PORT, /path/to.sock or @abstract;
    /// or NAME=TARGET per activated socket (FileDescriptorName=), several of them
    #[arg(value_name = "TARGET", num_args = 1.., required = true)]
    pub target: Vec<String>,

    /// Give up connecting to TARGET after this long and close the client
    #[arg(long, value_name = "TIMESPAN", default_value = "10s")]
    pub connect_timeout: String,

    /// Cut a connection that one side half-closed once nothing moved on it for this long
    /// (infinity: never)
    #[arg(long, value_name = "TIMESPAN", default_value = "10min")]
    pub half_close_timeout: String,

    /// Cut (RST both sides) a connection on which no byte moved either way for this long
    #[arg(long, value_name = "TIMESPAN", default_value = "infinity")]
    pub idle_timeout: String,

    /// Turn on TCP keepalive (probes after 60 s idle, every 10 s, 6 of them) on client and
    /// TCP target sockets, so a peer that vanished is noticed
    #[arg(long)]
    pub keepalive: bool,

    /// Send a PROXY protocol header (v1, as systemd-socket-proxyd's -p, or v2) naming the
    /// client to TARGET before any of its bytes
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
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory to serve (e.g. aptly's rootDir/public); without it only the API answers
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Close a client that has not sent a full request head within this long (408)
    #[arg(long, value_name = "TIMESPAN", default_value = "10s")]
    pub header_timeout: String,

    /// Close an idle keep-alive connection after this long
    #[arg(long, value_name = "TIMESPAN", default_value = "60s")]
    pub keepalive_timeout: String,

    /// Serve symlinks that point outside --root
    #[arg(long)]
    pub follow_symlinks: bool,

    /// List directories as HTML instead of answering 403
    #[arg(long)]
    pub autoindex: bool,

    /// Most threads opening and reading files that are not in the page cache (nginx's
    /// `aio threads`); cached files never wait for one
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub io_threads: usize,

    /// At most R requests a second from one client address range (prefixes as for
    /// --per-client-connections); more are answered 429 with Retry-After [default: no limit]
    #[arg(long, value_name = "R")]
    pub per_client_rate: Option<String>,

    /// Requests a client may make at once above --per-client-rate [default: R]
    #[arg(long, value_name = "N")]
    pub per_client_burst: Option<u32>,

    /// Write an access log line per response (nginx's combined format plus the request
    /// time) to PATH, or `-` for standard error; SIGUSR1 reopens it (logrotate)
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
