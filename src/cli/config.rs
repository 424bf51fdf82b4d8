//! What the flags come to once validated: plain data, nothing shared and nothing live.
//! `lib` builds the running service from it (the per-client tables, the counters, each
//! handler's settings), so the CLI can be parsed and checked without starting anything.

use std::path::PathBuf;
use std::time::Duration;

use crate::admission::client::Prefixes;
use crate::admission::proxy_header::{TrustedPeers, Version};
use crate::log::Level;
use crate::proxy::Targets;
use crate::runtime::ConnectionsMax;
use crate::systemd::activation::ListenAddr;

#[derive(Debug)]
pub enum Config {
    Proxy(Common, ProxyConfig),
    Serve(Common, ServeConfig),
}

/// What every subcommand takes: where to listen, workers, limits, lifecycle, logging.
#[derive(Debug)]
pub struct Common {
    pub listen: Vec<ListenAddr>,
    /// `--threads`, else the CPUs this process may use.
    pub threads: usize,
    pub connections_max: ConnectionsMax,
    /// `None`: never exit for idleness.
    pub exit_idle_time: Option<Duration>,
    /// `None`: wait for every connection however long it takes.
    pub shutdown_timeout: Option<Duration>,
    /// `None`: from the environment, else info.
    pub log_level: Option<Level>,
    pub admission: Admission,
}

/// Who a connection is from and whether it may stay.
#[derive(Debug)]
pub struct Admission {
    /// `--proxy-protocol-from`.
    pub trusted: TrustedPeers,
    /// `--proxy-protocol-on`: the sockets whose every connection starts with a header.
    pub header_required: Vec<String>,
    /// `--per-client-ipv4-prefix` and `--per-client-ipv6-prefix`.
    pub prefixes: Prefixes,
    /// `--per-client-connections`; `None`: no limit.
    pub per_client_max: Option<u32>,
    /// serve's `--per-client-rate`; `None`: no limit.
    pub rate: Option<Rate>,
}

/// A token bucket per client: `per_second` refills it, `burst` is its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug)]
pub struct ProxyConfig {
    pub target: Targets,
    pub connect_timeout: Duration,
    /// `None`: a half-closed connection may stay idle forever.
    pub half_close_timeout: Option<Duration>,
    /// `None`: a silent connection may stay forever.
    pub idle_timeout: Option<Duration>,
    pub keepalive: bool,
    /// `-p/--proxy-protocol`: the header sent to the target first.
    pub send_header: Option<Version>,
    /// `--metrics ADDR`: one more socket, named `metrics`.
    pub metrics: Option<ListenAddr>,
}

#[derive(Debug)]
pub struct ServeConfig {
    pub root: Option<PathBuf>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub follow_symlinks: bool,
    pub autoindex: bool,
    pub io_threads: usize,
    /// A path, or `-` for standard error.
    pub access_log: Option<String>,
    pub routes: RoutesConfig,
}

/// `--route` and the rules given to its prefixes.
#[derive(Debug, Default)]
pub struct RoutesConfig {
    pub routes: Vec<RouteConfig>,
    pub max_body: u64,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct RouteConfig {
    pub prefix: String,
    pub target: crate::proxy::Target,
    /// `--route-allow`; empty, any address.
    pub allow: Vec<crate::admission::networks::IpRange>,
    /// `--route-auth`.
    pub htpasswd: Option<PathBuf>,
}
