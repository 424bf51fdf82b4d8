//! Command-line flags (clap) and their validation into a [`Config`] before anything runs.
//!
//! Each subcommand's flags are in their own file, whose doc comments are the man pages;
//! every value is typed by the parser its flag names (`values.rs`), and `validate` checks
//! what spans flags and returns plain data (`config.rs`), from which `lib` builds the
//! live state. `proxy` keeps systemd-socket-proxyd's flags and TARGET syntax, so
//! replacing the `ExecStart=` line is all a migration takes.

mod common;
mod config;
mod proxy;
mod serve;
mod values;

use clap::{Parser, Subcommand};

pub use common::CommonArgs;
pub use config::{
    Admission, Common, Config, ProxyConfig, Rate, RouteConfig, RoutesConfig, ServeConfig,
};
pub use proxy::ProxyArgs;
pub use serve::ServeArgs;

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
            Command::Proxy(args) => Config::Proxy(
                args.common.into_common(None),
                ProxyConfig {
                    target: Targets::parse(&args.target)?,
                    connect_timeout: args.connect_timeout,
                    half_close_timeout: args.half_close_timeout,
                    idle_timeout: args.idle_timeout,
                    keepalive: args.keepalive,
                    send_header: args.proxy_protocol,
                    metrics: args.metrics,
                },
            ),
            Command::Serve(args) => Config::Serve(
                args.common
                    .into_common(rate(args.per_client_rate, args.per_client_burst)?),
                ServeConfig {
                    root: args.root,
                    header_timeout: args.header_timeout,
                    keepalive_timeout: args.keepalive_timeout,
                    follow_symlinks: args.follow_symlinks,
                    autoindex: args.autoindex,
                    io_threads: args.io_threads,
                    routes: routes(
                        args.routes,
                        args.route_allow,
                        args.route_auth,
                        (args.route_max_body, args.route_timeout),
                    )?,
                    access_log: args.access_log,
                },
            ),
        })
    }
}

/// `--route`s with the rules given to their prefixes: a rule for a prefix no route has,
/// or two routes with one prefix, is a mistake to say at start.
fn routes(
    routes: Vec<(String, crate::proxy::Target)>,
    allow: Vec<(String, crate::admission::networks::IpRange)>,
    auth: Vec<(String, std::path::PathBuf)>,
    (max_body, timeout): (u64, std::time::Duration),
) -> Result<RoutesConfig, String> {
    let mut config = RoutesConfig {
        routes: Vec::new(),
        max_body,
        timeout,
    };
    for (prefix, target) in routes {
        if config.routes.iter().any(|r| r.prefix == prefix) {
            return Err(format!(
                "--route {prefix}: given twice; a prefix has one target"
            ));
        }
        config.routes.push(RouteConfig {
            prefix,
            target,
            allow: Vec::new(),
            htpasswd: None,
        });
    }
    for (prefix, range) in allow {
        route_named(&mut config, "--route-allow", &prefix)?
            .allow
            .push(range);
    }
    for (prefix, file) in auth {
        let route = route_named(&mut config, "--route-auth", &prefix)?;
        if route.htpasswd.replace(file).is_some() {
            return Err(format!(
                "--route-auth {prefix}: given twice; a route has one file"
            ));
        }
    }
    Ok(config)
}

/// The route a rule names by its prefix.
fn route_named<'a>(
    config: &'a mut RoutesConfig,
    flag: &str,
    prefix: &str,
) -> Result<&'a mut RouteConfig, String> {
    let known: Vec<&str> = config.routes.iter().map(|r| r.prefix.as_str()).collect();
    let message = format!(
        "{flag} {prefix}=...: no --route has the prefix {prefix} (routes: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    );
    config
        .routes
        .iter_mut()
        .find(|r| r.prefix == prefix)
        .ok_or(message)
}

/// `--per-client-rate R` and `--per-client-burst N`, a burst of R unless given.
fn rate(per_second: Option<u32>, burst: Option<u32>) -> Result<Option<Rate>, String> {
    match (per_second, burst) {
        (None, Some(_)) => Err("--per-client-burst needs --per-client-rate".into()),
        (None, None) => Ok(None),
        (Some(per_second), burst) => Ok(Some(Rate {
            per_second,
            burst: burst.unwrap_or(per_second),
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admission::proxy_header::Version;
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
        assert_eq!(common.connections_max, ConnectionsMax::Given(10));
        assert_eq!(common.exit_idle_time, Some(Duration::from_secs(300)));
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
        assert_eq!(common.connections_max, ConnectionsMax::Default);
        assert_eq!(common.exit_idle_time, None);
        assert!(common.threads >= 1);
    }

    /// `args`'s error, which must name its flag (the word after the subcommand, as
    /// clap shows it) and say `reason`.
    fn rejected(args: &str, reason: &str) {
        let err = parse(&args.split(' ').collect::<Vec<_>>()).unwrap_err();
        let flag = args.split([' ', '=']).nth(1).unwrap_or_default();
        assert!(err.contains(&format!("for '{flag}")), "{args}: {err:?}");
        assert!(err.contains(reason), "{args}: no {reason:?} in {err:?}");
    }

    /// clap names the flag of every bad value, from its own declaration; the parsers'
    /// messages say only what is wrong with the value.
    #[test]
    fn bad_values_name_their_flag() {
        for case in [
            "proxy --connections-max 0 x:1 => <N>': must be at least 1",
            "proxy --threads 0 x:1 => <N>': must be at least 1",
            "proxy --exit-idle-time soon x:1 => <TIMESPAN>': expected a number",
            "proxy --shutdown-timeout 1parsec x:1 => <TIMESPAN>': unknown unit",
            "proxy --connect-timeout infinity x:1 => <TIMESPAN>': cannot be infinity",
            "proxy --idle-timeout= x:1 => <TIMESPAN>': empty time span",
            "proxy --listen nowhere x:1 => <ADDR>': invalid listen address",
            "proxy --metrics nowhere x:1 => <ADDR>': invalid listen address",
            "proxy --log-level loud x:1 => <LEVEL>': use error, warning",
            "proxy --proxy-protocol=v3 x:1 => [=<VERSION>]': use v1",
            "proxy --proxy-protocol-from 10/8 x:1 => <CIDR>': not an address",
            "proxy --per-client-connections 0 x:1 => <N>': must be at least 1 (leave",
            "proxy --per-client-ipv6-prefix 129 x:1 => <LEN>': 129 is not in 0..=128",
            "serve --io-threads 0 => <N>': must be at least 1: files that are not",
            "serve --per-client-rate 4x => <R>': give requests per second",
            "serve --per-client-burst 0 => <N>': must be at least 1",
            "serve --header-timeout infinity => <TIMESPAN>': cannot be infinity",
            "serve --keepalive-timeout soon => <TIMESPAN>': expected a number",
        ] {
            let (args, reason) = case.split_once(" => ").unwrap();
            rejected(args, reason);
        }
        assert!(parse(&["proxy"]).is_err());
        assert!(parse(&["proxy", "a:1", "b:2"]).is_err());
    }

    #[test]
    fn rules_between_flags_are_checked_once_all_are_parsed() {
        let err = parse(&["serve", "--per-client-burst", "5"]).unwrap_err();
        assert_eq!(err, "--per-client-burst needs --per-client-rate");
        let rate = |args: &[&str]| match parse(args) {
            Ok(Config::Serve(common, _)) => common.admission.rate,
            other => panic!("{args:?}: {other:?}"),
        };
        let burst = [
            "serve",
            "--per-client-rate",
            "5/s",
            "--per-client-burst",
            "9",
        ];
        assert_eq!(
            rate(&burst),
            Some(Rate {
                per_second: 5,
                burst: 9
            })
        );
        let no_burst = ["serve", "--per-client-rate", "40"];
        assert_eq!(
            rate(&no_burst),
            Some(Rate {
                per_second: 40,
                burst: 40
            })
        );
        assert_eq!(rate(&["serve"]), None);
    }

    /// Defaults are text, parsed by the flag's own parser as a value given would be.
    #[test]
    fn defaults_go_through_the_parsers() {
        let Ok(Config::Serve(common, serve)) = parse(&["serve"]) else {
            panic!("should parse");
        };
        assert_eq!(common.shutdown_timeout, Some(Duration::from_secs(30)));
        assert_eq!(serve.header_timeout, Duration::from_secs(10));
        assert_eq!(serve.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(serve.io_threads, 32);
        let admission = &common.admission;
        assert_eq!(
            (admission.prefixes.ipv4, admission.prefixes.ipv6),
            (32, 128)
        );
        assert_eq!(admission.per_client_max, None);
        let Ok(Config::Proxy(_, proxy)) = parse(&["proxy", "x:1"]) else {
            panic!("should parse");
        };
        assert_eq!(proxy.idle_timeout, None);
        assert_eq!(proxy.send_header, None);
        let Ok(Config::Proxy(_, proxy)) = parse(&["proxy", "-p", "x:1"]) else {
            panic!("should parse");
        };
        assert_eq!(proxy.send_header, Some(Version::V1), "-p alone is v1");
    }
}
