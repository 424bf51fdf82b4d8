//! What the flags come to once validated: the [`Config`] that `lib` runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::client::ClientRules;
use crate::log::Level;
use crate::runtime::Lifecycle;
use crate::systemd::activation::ListenAddr;

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
