//! What a burst of connections leaves behind: once they have closed, the process gives
//! the memory they took back to the system, so a host after a busy minute does not keep
//! that minute's memory for good (serve and proxy, both drivers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::proxy::{metric_value, proxy, proxy_with_metrics, scrape};
use crate::serve::{get, serve};
use crate::util::*;

/// As many connections as the issue asks for at least; the fd limit of a test machine
/// holds them with the proxy's two sockets each.
const BURST: usize = 4000;

/// How long the memory may take to come back, and how much may stay: twice the idle
/// figure plus 8 MiB (issue 19).
const RETURN_WITHIN: Duration = Duration::from_secs(15);
const SLACK_KIB: u64 = 8 * 1024;

fn rss_kib(ringsock: &Ringsock) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", ringsock.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Opens `BURST` connections, each proven by a round trip, holds them, then closes them
/// all; checks the memory grew with them and came back after.
fn burst(ringsock: &Ringsock, what: &str, open: impl Fn() -> TcpStream) {
    raise_own_fd_limit(3 * BURST as u64);
    // One round trip first, so the idle figure includes what any first use allocates.
    drop(open());
    // Time for the server to end that connection and free what it held: the idle figure
    // is taken after, and no count says when the freeing is done.
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(ringsock);
    let conns: Vec<TcpStream> = (0..BURST).map(|_| open()).collect();
    let held = rss_kib(ringsock);
    assert!(
        held > idle + BURST as u64 / 2,
        "{what}: {BURST} connections cost less than half a KiB each ({idle} -> {held} KiB): \
         the test would not see memory kept"
    );
    drop(conns);
    let bound = 2 * idle + SLACK_KIB;
    wait_until(
        RETURN_WITHIN,
        || (rss_kib(ringsock) <= bound).then_some(()),
        || {
            format!(
                "{what}: RSS {} KiB after closing {BURST} connections, above 2 x {idle} + {SLACK_KIB} \
                 (it was {held} with them open); what the server said of it:\n{}",
                rss_kib(ringsock),
                memory_lines(ringsock)
            )
        },
    );
}

/// The server's log lines about giving memory back, and how many connections it has.
fn memory_lines(ringsock: &Ringsock) -> String {
    let log = ringsock.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("memory")).collect();
    format!(
        "{}\n(open sockets: {})",
        lines.join("\n"),
        ringsock.open_sockets()
    )
}

#[test]
fn memory_comes_back_after_a_burst_of_connections() {
    for driver in DRIVERS {
        let server = serve(driver, &["-c", "10000"]);
        burst(&server.ringsock, &format!("serve {driver:?}"), || {
            let mut conn = connect_tcp(server.addr);
            conn.write_all(get("/api/version").as_bytes()).unwrap();
            let mut answer = [0u8; 12];
            conn.read_exact(&mut answer).unwrap();
            conn
        });
        server.ringsock.stop();

        let backend = EchoBackend::unix();
        let (ringsock, addr) = proxy(driver, &["-c", "10000"], backend.path.to_str().unwrap());
        burst(&ringsock, &format!("proxy {driver:?}"), || {
            let mut conn = connect_tcp(addr);
            conn.write_all(b"ping").unwrap();
            let mut echo = [0u8; 4];
            conn.read_exact(&mut echo).unwrap();
            conn
        });
        ringsock.stop();
    }
}

/// Waits until `/metrics` (fetched by `scrape`) says at least `n` waits went quiet.
fn wait_quieted(what: &str, n: u64, scrape: impl Fn() -> String) {
    wait_until(
        Duration::from_secs(10),
        || (metric_value(&scrape(), "ringsock_connections_quieted_total") >= n).then_some(()),
        || {
            format!(
                "{what}: the sweep never moved {n} waits off their buffers:\n{}",
                scrape()
            )
        },
    );
}

/// A keep-alive connection idle past the sweep (1 to 2 s) gives up its buffers and waits
/// on without any; its next requests, pipelined, are answered exactly.
#[test]
fn a_quiet_keep_alive_connection_gives_up_its_buffers_and_still_answers() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        let body: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        server.file("f", &body);
        let mut conn = server.connect();
        conn.send(get("/f").as_bytes());
        assert_eq!(conn.response(false).body, body);
        wait_quieted(&format!("serve {driver:?}"), 1, || {
            String::from_utf8(server.get(&get("/metrics")).body).unwrap()
        });
        conn.send((get("/f") + &get("/api/version")).as_bytes());
        assert_eq!(conn.response(false).body, body, "{driver:?}");
        assert_eq!(conn.response(false).status, 200, "{driver:?}");
        server.ringsock.stop();
    }
}

/// Both directions of a proxied connection idle past the sweep wait without buffers; a
/// burst right after (which goes to splicing from its first buffer) and a small message
/// arrive exact.
#[test]
fn a_quiet_proxied_connection_gives_up_its_buffers_and_still_forwards() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr, metrics) =
            proxy_with_metrics(driver, &[], backend.path.to_str().unwrap());
        let mut client = connect_tcp(addr);
        assert_eq!(round_trip(&mut client, b"hello").unwrap(), b"hello");
        wait_quieted(&format!("proxy {driver:?}"), 2, || scrape(metrics));
        let burst = pattern(256 * 1024, 7);
        let mut writer = client.try_clone().unwrap();
        let sent = burst.clone();
        let sending = std::thread::spawn(move || writer.write_all(&sent));
        let mut echoed = vec![0u8; burst.len()];
        client
            .read_exact(&mut echoed)
            .expect("the echo of the burst");
        sending.join().unwrap().expect("sending the burst");
        assert!(echoed == burst, "{driver:?}: the burst came back different");
        assert_eq!(round_trip(&mut client, b"again").unwrap(), b"again");
        drop(client);
        ringsock.stop();
    }
}
