//! Command-line flags (clap) and their validation into a [`Config`] before anything runs.
//!
//! `proxy` keeps systemd-socket-proxyd's flags and TARGET syntax, so replacing the
//! `ExecStart=` line is all a migration takes.

mod common;
mod config;
mod proxy;
mod serve;
mod values;

use std::sync::Arc;

use clap::{Parser, Subcommand};

pub use common::CommonArgs;
pub use config::{Common, Config, ProxyConfig, ServeConfig};
pub use proxy::ProxyArgs;
pub use serve::ServeArgs;

use crate::admission::client::RequestRate;
use crate::proxy::Targets;

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

impl Cli {
    /// Turns parsed flags into a [`Config`]. Each value was checked by its flag's parser;
    /// what is left are the rules between flags, and the error names the flags and the fix.
    pub fn validate(self) -> Result<Config, String> {
        Ok(match self.command {
            Command::Proxy(args) => {
                let common =
                    args.common
                        .validate(FDS_PER_PROXIED_CONNECTION, PROXY_IO_THREADS, None)?;
                let proxy = ProxyConfig {
                    target: Targets::parse(&args.target)?,
                    connect_timeout: args.connect_timeout,
                    half_close_timeout: args.half_close_timeout,
                    idle_timeout: args.idle_timeout,
                    keepalive: args.keepalive,
                    clients: common.clients.clone(),
                    counters: Arc::default(),
                    metrics_listen: args.metrics,
                    send_header: args.proxy_protocol,
                };
                Config::Proxy(common, proxy)
            }
            Command::Serve(args) => Config::Serve(
                args.common.validate(
                    FDS_PER_HTTP_CONNECTION,
                    args.io_threads,
                    rate_limit(args.per_client_rate, args.per_client_burst)?,
                )?,
                ServeConfig {
                    root: args.root,
                    header_timeout: args.header_timeout,
                    keepalive_timeout: args.keepalive_timeout,
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

/// `--per-client-rate R` and `--per-client-burst N`, a burst of R unless given.
fn rate_limit(rate: Option<u32>, burst: Option<u32>) -> Result<Option<RequestRate>, String> {
    match (rate, burst) {
        (None, Some(_)) => Err("--per-client-burst needs --per-client-rate".into()),
        (None, None) => Ok(None),
        (Some(per_second), burst) => Ok(Some(RequestRate::new(
            per_second,
            burst.unwrap_or(per_second),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::ConnectionsMax;

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

    /// clap names the flag of every bad value, from its own declaration; the parsers'
    /// messages say only what is wrong with the value.
    #[test]
    fn bad_values_name_their_flag() {
        let cases: [(&[&str], &str); 13] = [
            (&["-c", "0"], "'--connections-max <N>': must be at least 1"),
            (&["--threads", "0"], "'--threads <N>': must be at least 1"),
            (
                &["--exit-idle-time", "soon"],
                "'--exit-idle-time <TIMESPAN>': expected",
            ),
            (
                &["--shutdown-timeout", "1 parsec"],
                "'--shutdown-timeout <TIMESPAN>': unknown",
            ),
            (
                &["--connect-timeout", "infinity"],
                "'--connect-timeout <TIMESPAN>': cannot be",
            ),
            (
                &["--idle-timeout", ""],
                "'--idle-timeout <TIMESPAN>': empty",
            ),
            (
                &["--listen", "nowhere"],
                "'--listen <ADDR>': invalid listen address",
            ),
            (
                &["--metrics", "nowhere"],
                "'--metrics <ADDR>': invalid listen address",
            ),
            (
                &["--log-level", "loud"],
                "'--log-level <LEVEL>': use error,",
            ),
            (
                &["--proxy-protocol=v3"],
                "'--proxy-protocol[=<VERSION>]': use v1",
            ),
            (
                &["--proxy-protocol-from", "10.0.0.0/33"],
                "<CIDR>': the prefix length must",
            ),
            (
                &["--per-client-connections", "0"],
                "<N>': must be at least 1 (leave it out",
            ),
            (
                &["--per-client-ipv6-prefix", "129"],
                "<LEN>': 129 is not in 0..=128",
            ),
        ];
        for (flags, needle) in cases {
            let args: Vec<&str> = ["proxy"]
                .iter()
                .chain(flags)
                .chain(&["x:1"])
                .copied()
                .collect();
            let err = parse(&args).unwrap_err();
            assert!(err.contains(needle), "{flags:?}: no {needle:?} in {err:?}");
        }
        for (flags, needle) in [
            (
                ["--io-threads", "0"],
                "'--io-threads <N>': must be at least 1: files",
            ),
            (
                ["--per-client-rate", "4x"],
                "'--per-client-rate <R>': give requests",
            ),
            (
                ["--per-client-burst", "0"],
                "'--per-client-burst <N>': must be at least 1",
            ),
            (
                ["--header-timeout", "infinity"],
                "'--header-timeout <TIMESPAN>': cannot be",
            ),
            (
                ["--keepalive-timeout", "soon"],
                "'--keepalive-timeout <TIMESPAN>': expected",
            ),
        ] {
            let err = parse(&["serve", flags[0], flags[1]]).unwrap_err();
            assert!(err.contains(needle), "{flags:?}: no {needle:?} in {err:?}");
        }
        assert!(parse(&["proxy"]).is_err());
        assert!(parse(&["proxy", "a:1", "b:2"]).is_err());
    }

    #[test]
    fn rules_between_flags_are_checked_once_all_are_parsed() {
        let err = parse(&["serve", "--per-client-burst", "5"]).unwrap_err();
        assert_eq!(err, "--per-client-burst needs --per-client-rate");
        assert!(parse(&[
            "serve",
            "--per-client-rate",
            "5/s",
            "--per-client-burst",
            "9"
        ])
        .is_ok());
    }
}
