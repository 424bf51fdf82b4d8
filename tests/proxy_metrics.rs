//! The proxy's metrics socket beside `--connections-max`, both drivers: a scrape is
//! answered when the proxy is full, scrapers (silent or not) take no proxied client's
//! slot, are not counted as connections, are bounded in number, and neither hold the
//! shutdown nor keep `--exit-idle-time` from running out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::proxy::{metric_value, scrape};
use crate::util::*;

const LOG: Duration = Duration::from_secs(10);

/// The issue asks for an answer within 100 ms; the failure it reports is 4.7 s and
/// more. Asserted with a margin for a debug build on 2 shared, busy cores: far above
/// what a scrape takes here, far below the failure.
const PROMPT: Duration = Duration::from_secs(1);

/// Scrapes a process may be answering at once (`proxy::plan::METRICS_CONNECTIONS_MAX`).
const METRICS_CONNECTIONS_MAX: usize = 16;

/// `ringsock proxy ARGS.. TARGET` on two activated sockets, `web` (forwarded) and
/// `metrics`; waits until it runs on `driver`. Returns both addresses.
fn proxy_with_metrics(
    driver: Driver,
    args: &[&str],
    target: &str,
) -> (Ringsock, SocketAddr, SocketAddr) {
    let (web, web_addr) = Listen::tcp();
    let (metrics, metrics_addr) = Listen::tcp();
    let mut all = vec!["proxy"];
    all.extend_from_slice(args);
    all.push(target);
    let ringsock = Spawn::new(&all)
        .listen(web)
        .listen(metrics)
        .names("web:metrics")
        .driver(driver)
        .start();
    ringsock.expect_driver(driver);
    (ringsock, web_addr, metrics_addr)
}

/// One scrape: the body and how long the whole exchange took, or why none came back
/// within `timeout`.
fn timed_scrape(addr: SocketAddr, timeout: Duration) -> Result<(String, Duration), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
    let took = start.elapsed();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 OK") => Ok((body.to_string(), took)),
        _ => Err(format!("not a metrics answer: {text:?}")),
    }
}

/// Connections that reach the metrics socket and say nothing.
fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect_tcp(addr)).collect()
}

/// Waits until ringsock holds `n` more sockets than `base`: it accepted them.
fn wait_sockets(ringsock: &Ringsock, base: usize, n: usize) {
    wait_until(
        LOG,
        || (ringsock.open_sockets() >= base + n).then_some(()),
        || {
            format!(
                "ringsock holds {} sockets, expected {base} + {n}",
                ringsock.open_sockets()
            )
        },
    )
}

/// `-c 8` with 8 proxied connections open: scrapes are still answered at once, and say
/// 8 open, 8 accepted (the scrapes themselves are not connections of the proxy's).
#[test]
fn a_scrape_is_answered_with_the_proxy_at_connections_max() {
    const N: usize = 8;
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (ringsock, web, metrics) = proxy_with_metrics(driver, &["-c", "8"], &backend.target);
        let held: Vec<TcpStream> = (0..N)
            .map(|i| {
                let mut client = connect_tcp(web);
                assert_eq!(round_trip(&mut client, &[i as u8]).unwrap(), [i as u8]);
                client
            })
            .collect();
        let mut took = Vec::new();
        for _ in 0..5 {
            let (text, t) = timed_scrape(metrics, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{driver:?}: at -c {N}, a scrape got {e}"));
            assert_eq!(metric_value(&text, "ringsock_connections_open"), N as u64);
            assert_eq!(
                metric_value(&text, "ringsock_connections_accepted_total"),
                N as u64,
                "{driver:?}: scrapes counted as accepted connections"
            );
            took.push(t);
        }
        eprintln!("{driver:?}: scrapes at -c {N} full took {took:?}");
        assert!(
            took.iter().all(|t| *t < PROMPT),
            "{driver:?}: scrapes at -c {N} full took {took:?}"
        );
        drop(held);
        ringsock.stop();
    }
}

/// `-c 8` and 8 connections to the metrics socket that never send a request: a proxied
/// client is served at once, not after their 5 s read timeout.
#[test]
fn silent_metrics_connections_delay_no_proxied_client() {
    const N: usize = 8;
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (ringsock, web, metrics) = proxy_with_metrics(driver, &["-c", "8"], &backend.target);
        let base = ringsock.open_sockets();
        let quiet = silent(metrics, N);
        wait_sockets(&ringsock, base, N);
        let mut took = Vec::new();
        for i in 0..3u8 {
            let start = Instant::now();
            let mut client = connect_tcp(web);
            assert_eq!(round_trip(&mut client, &[i]).unwrap(), [i], "{driver:?}");
            took.push(start.elapsed());
        }
        eprintln!("{driver:?}: proxied round trips beside {N} silent scrapers took {took:?}");
        assert!(
            took.iter().all(|t| *t < PROMPT),
            "{driver:?}: with {N} silent metrics connections, proxied clients took {took:?}"
        );
        drop(quiet);
        ringsock.stop();
    }
}

/// Silent metrics connections cannot pile up: past 16 at once, the rest wait in the
/// listen backlog (as clients do at --connections-max), and once they go scrapes are
/// answered again.
#[test]
fn silent_metrics_connections_are_bounded() {
    const EXTRA: usize = 4;
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (ringsock, _web, metrics) = proxy_with_metrics(driver, &[], &backend.target);
        let base = ringsock.open_sockets();
        let quiet = silent(metrics, METRICS_CONNECTIONS_MAX + EXTRA);
        wait_until(
            LOG,
            || {
                let held = ringsock.open_sockets() - base;
                (held == METRICS_CONNECTIONS_MAX && accept_queue(metrics) == Some(EXTRA))
                    .then_some(())
            },
            || {
                format!(
                    "{driver:?}: ringsock holds {} metrics connections, {:?} wait in the \
                     backlog; expected {METRICS_CONNECTIONS_MAX} and {EXTRA}",
                    ringsock.open_sockets() - base,
                    accept_queue(metrics)
                )
            },
        );
        drop(quiet);
        let text = wait_until(
            LOG,
            || timed_scrape(metrics, Duration::from_secs(3)).ok(),
            || format!("{driver:?}: no scrape answered after the silent ones left"),
        );
        assert_eq!(metric_value(&text.0, "ringsock_connections_open"), 0);
        ringsock.stop();
    }
}

/// A scraper that connected and said nothing does not hold the graceful shutdown for
/// its 5 s read timeout.
#[test]
fn silent_metrics_connections_do_not_hold_the_shutdown() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (ringsock, _web, metrics) = proxy_with_metrics(driver, &[], &backend.target);
        let base = ringsock.open_sockets();
        let quiet = silent(metrics, 3);
        wait_sockets(&ringsock, base, 3);
        let start = Instant::now();
        ringsock.stop();
        let took = start.elapsed();
        eprintln!("{driver:?}: stopped {took:?} after SIGTERM with 3 silent scrapers");
        assert!(
            took < Duration::from_secs(3),
            "{driver:?}: silent scrapers held the shutdown for {took:?}"
        );
        drop(quiet);
    }
}

/// `--exit-idle-time 1s` with a scrape every few tens of milliseconds and a scraper that
/// stays silent: it exits about a second after start all the same. Scrapes are not use
/// of the service: a Prometheus scraping every 15 s would otherwise keep an idle proxy
/// (and the backend it would let stop) running forever.
#[test]
fn scrapes_are_not_activity_for_exit_idle_time() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (web, _) = Listen::tcp();
        let (metrics, metrics_addr) = Listen::tcp();
        let start = Instant::now();
        let mut ringsock = Spawn::new(&["proxy", "--exit-idle-time", "1s", &backend.target])
            .listen(web)
            .listen(metrics)
            .names("web:metrics")
            .driver(driver)
            .start();
        let _quiet = silent(metrics_addr, 1);
        let mut answered = 0;
        let status = wait_until(
            LOG,
            || {
                if let Some(status) = ringsock.exited() {
                    return Some(status);
                }
                answered += usize::from(timed_scrape(metrics_addr, Duration::from_secs(2)).is_ok());
                None
            },
            || format!("{driver:?}: still running after {LOG:?} of scrapes"),
        );
        let after = start.elapsed();
        assert!(
            status.success(),
            "{driver:?}: {status}\n{}",
            ringsock.stderr()
        );
        assert!(
            ringsock.stderr().contains("--exit-idle-time"),
            "{}",
            ringsock.stderr()
        );
        assert!(
            answered >= 3,
            "{driver:?}: only {answered} scrapes answered"
        );
        assert!(
            after < Duration::from_secs(4),
            "{driver:?}: exited {after:?} after start with --exit-idle-time 1s"
        );
    }
}

/// The proxy's metrics show the refusals it enforces, as serve's do: connections closed
/// for a missing PROXY header (`--proxy-protocol-on`) and over
/// `--per-client-connections`.
#[test]
fn the_proxys_metrics_count_its_refusals() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (web, web_addr) = Listen::tcp();
        let (lb, lb_addr) = Listen::tcp();
        let (metrics, metrics_addr) = Listen::tcp();
        let ringsock = Spawn::new(&[
            "proxy",
            "--proxy-protocol-on",
            "lb",
            "--per-client-connections",
            "1",
            &format!("web={}", backend.target),
            &format!("lb={}", backend.target),
        ])
        .listen(web)
        .listen(lb)
        .listen(metrics)
        .names("web:lb:metrics")
        .driver(driver)
        .start();
        ringsock.expect_driver(driver);
        // No header where one is required: closed, counted.
        let mut headless = connect_tcp(lb_addr);
        headless.write_all(b"not a PROXY header\r\n").unwrap();
        // A second connection from the same client while the first is open: refused.
        let mut first = connect_tcp(web_addr);
        assert_eq!(round_trip(&mut first, b"1").unwrap(), b"1");
        let second = connect_tcp(web_addr);
        let text = wait_until(
            LOG,
            || {
                let text = scrape(metrics_addr);
                let refused = (
                    metric_value(&text, "ringsock_proxy_protocol_refused_total"),
                    metric_value(&text, "ringsock_per_client_refused_total"),
                );
                (refused == (1, 1)).then_some(text)
            },
            || {
                format!(
                    "{driver:?}: the refusals never showed:\n{}",
                    scrape(metrics_addr)
                )
            },
        );
        assert_eq!(
            metric_value(&text, "ringsock_per_client_ranges"),
            1,
            "{driver:?}"
        );
        drop((headless, first, second));
        ringsock.stop();
    }
}
