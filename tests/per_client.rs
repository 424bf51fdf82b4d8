//! `--per-client-connections`: exact across workers, per configurable prefix, counted
//! for the client a PROXY header names, and given back when a connection ends; for both
//! subcommands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::serve::serve;
use crate::util::*;

/// A connection to `addr` from the local address `from` (any 127.0.0.0/8 address).
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// Whether the server closed `stream` (EOF or reset) within a second.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    match stream.read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Whether a GET on `stream` is answered 200.
fn served(stream: &mut TcpStream, header: &[u8]) -> bool {
    let mut req = header.to_vec();
    req.extend_from_slice(b"GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    if stream.write_all(&req).is_err() {
        return false;
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
}

#[test]
fn serve_limits_each_prefix_exactly_across_workers() {
    for driver in DRIVERS {
        let server = serve(driver, &["--threads", "2", "--per-client-connections", "3"]);
        server.file("f.txt", b"hello\n");
        let mut conns: Vec<TcpStream> = (0..5)
            .map(|_| connect_from("127.0.0.1", server.addr))
            .collect();
        // Time for both workers to take all five (and close two) before any is judged.
        std::thread::sleep(Duration::from_millis(300));
        let open: Vec<bool> = conns.iter_mut().map(|c| !closed(c)).collect();
        assert_eq!(
            open.iter().filter(|&&o| o).count(),
            3,
            "{driver:?}: {open:?}"
        );
        // Another /32 is another client.
        let mut other = connect_from("127.0.0.2", server.addr);
        assert!(served(&mut other, b""), "{driver:?}: 127.0.0.2 was refused");
        // Closing one gives its slot back.
        let first_open = open.iter().position(|&o| o).unwrap();
        drop(conns.remove(first_open));
        // Time for the server to see the close: the slot itself has no outside witness.
        std::thread::sleep(Duration::from_millis(200));
        let mut again = connect_from("127.0.0.1", server.addr);
        assert!(
            served(&mut again, b""),
            "{driver:?}: the freed slot was not given back"
        );
        let metrics = {
            let mut s = connect_from("127.0.0.4", server.addr);
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        };
        assert!(
            metrics.contains("ringsock_per_client_refused_total 2\n"),
            "{metrics}"
        );
        server.ringsock.stop();
    }
}

#[test]
fn a_prefix_length_makes_neighbours_one_client() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &[
                "--per-client-connections",
                "1",
                "--per-client-ipv4-prefix",
                "8",
            ],
        );
        server.file("f.txt", b"hello\n");
        let mut first = connect_from("127.0.0.1", server.addr);
        assert!(served(&mut first, b""));
        let mut neighbour = connect_from("127.0.0.9", server.addr);
        assert!(
            closed(&mut neighbour),
            "{driver:?}: 127.0.0.9 is in the same /8"
        );
        server.ringsock.stop();
    }
}

#[test]
fn the_client_a_proxy_header_names_is_the_one_limited() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &[
                "--proxy-protocol-from",
                "127.0.0.1",
                "--per-client-connections",
                "1",
            ],
        );
        server.file("f.txt", b"hello\n");
        let header =
            |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 1000 80\r\n").into_bytes();
        let mut a = connect_from("127.0.0.1", server.addr);
        assert!(served(&mut a, &header("192.0.2.1")), "{driver:?}");
        let mut b = connect_from("127.0.0.1", server.addr);
        assert!(
            served(&mut b, &header("192.0.2.2")),
            "{driver:?}: another client behind the same balancer"
        );
        let mut c = connect_from("127.0.0.1", server.addr);
        c.write_all(&header("192.0.2.1")).unwrap();
        assert!(
            closed(&mut c),
            "{driver:?}: 192.0.2.1 got a second connection"
        );
        server.ringsock.stop();
    }
}

#[test]
fn proxy_limits_each_client_too() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr) = crate::proxy::proxy(
            driver,
            &["--threads", "2", "--per-client-connections", "2"],
            backend.path.to_str().unwrap(),
        );
        let mut conns: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", addr)).collect();
        // Time for both workers to take all four (and close two) before any is judged.
        std::thread::sleep(Duration::from_millis(300));
        let open: Vec<bool> = conns.iter_mut().map(|c| !closed(c)).collect();
        assert_eq!(
            open.iter().filter(|&&o| o).count(),
            2,
            "{driver:?}: {open:?}"
        );
        for (conn, _) in conns.iter_mut().zip(&open).filter(|(_, &o)| o) {
            conn.write_all(b"ping").unwrap();
            let mut reply = [0u8; 4];
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            conn.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, b"ping", "{driver:?}");
        }
        // A proxy lets open connections finish before it exits.
        drop(conns);
        ringsock.stop();
    }
}

#[test]
fn serve_answers_429_over_the_request_rate_and_keeps_the_connection() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &["--per-client-rate", "5/s", "--per-client-burst", "5"],
        );
        server.file("f.txt", b"hello\n");
        let mut conn = crate::serve::Conn::new(connect_from("127.0.0.1", server.addr));
        let mut statuses = Vec::new();
        for _ in 0..12 {
            conn.send(crate::serve::get("/f.txt").as_bytes());
            let resp = conn.response(false);
            if resp.status == 429 {
                assert_eq!(resp.header("Retry-After"), Some("1"), "{driver:?}");
            }
            statuses.push(resp.status);
        }
        assert!(
            statuses[..5].iter().all(|&s| s == 200),
            "{driver:?}: {statuses:?}"
        );
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        assert!(limited >= 5, "{driver:?}: {statuses:?}");
        // Another address has its own bucket; this one refills at 5 a second.
        let mut other = connect_from("127.0.0.2", server.addr);
        assert!(served(&mut other, b""), "{driver:?}");
        // Time is what refills the bucket.
        std::thread::sleep(Duration::from_millis(1200));
        conn.send(crate::serve::get("/f.txt").as_bytes());
        assert_eq!(conn.response(false).status, 200, "{driver:?}: no refill");
        server.ringsock.stop();
    }
}
