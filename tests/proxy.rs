//! `ringsock proxy` against real activated sockets and real backends, every behaviour on
//! both drivers (io_uring, and epoll via MONOIO_FORCE_LEGACY_DRIVER=1).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::util::*;

/// How long a log line or notify message may take: generous, a debug build on 2 busy
/// cores; waits end as soon as the line is there.
const LOG: Duration = Duration::from_secs(10);

/// Starts `ringsock proxy ARGS.. TARGET` on one TCP listener and waits until it runs on
/// `driver`, so a test never silently exercises the other one.
pub fn proxy(driver: Driver, args: &[&str], target: &str) -> (Ringsock, SocketAddr) {
    let (listen, addr) = Listen::tcp();
    let mut all = vec!["proxy"];
    all.extend_from_slice(args);
    all.push(target);
    let ringsock = Spawn::new(&all).listen(listen).driver(driver).start();
    ringsock.expect_driver(driver);
    (ringsock, addr)
}

#[test]
fn forwards_and_keeps_half_close_on_both_drivers() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", backend.path.to_str().unwrap()])
            .listen(listen)
            .driver(driver)
            .start();
        let data = pattern(3 << 20, 7);
        let reply = send_half_close_read(connect_tcp(addr), &data);
        assert!(
            reply == data,
            "{driver:?}: reply of {} bytes differs from the {} sent",
            reply.len(),
            data.len()
        );
        ringsock.stop();
    }
}

/// Every proxied connection's two sockets are closed once it ends: on io_uring the close
/// is a detached CLOSE submission (vendor/monoio patch 1), which must still run when the
/// worker next enters the ring. 300 connections one after another, then the process
/// holds no more sockets than before them.
#[test]
fn ended_connections_leave_no_socket_open_on_both_drivers() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr) = proxy(driver, &[], backend.path.to_str().unwrap());
        // The first connection starts the workers; count after it.
        assert_eq!(send_half_close_read(connect_tcp(addr), b"warm"), b"warm");
        let before = ringsock.open_fds("socket:");
        for i in 0..300u32 {
            let data = i.to_be_bytes();
            let reply = send_half_close_read(connect_tcp(addr), &data);
            assert_eq!(reply, data, "{driver:?}: connection {i}");
        }
        // The last close runs when its worker next enters the ring: bounded wait.
        wait_until(
            Duration::from_secs(5),
            || (ringsock.open_fds("socket:") <= before).then_some(()),
            || {
                format!(
                    "{driver:?}: {} sockets open after 300 ended connections, {before} before",
                    ringsock.open_fds("socket:")
                )
            },
        );
        ringsock.stop();
    }
}

#[test]
fn logs_the_driver_in_use_once() {
    let backend = EchoBackend::unix();
    for (driver, needle) in [
        (Driver::IoUring, "using the io_uring driver"),
        (Driver::Epoll, "using the epoll driver"),
    ] {
        let (listen, _) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", backend.path.to_str().unwrap()])
            .listen(listen)
            .driver(driver)
            .start();
        ringsock.wait_for_log(needle, Duration::from_secs(10));
        let log = ringsock.stop();
        assert_eq!(log.matches("driver on").count(), 1, "{log}");
    }
}

/// 24 clients at once, each sending, half-closing and reading its echo while it sends:
/// every byte must come back in order, then EOF. Two carry 64 MiB; the rest are random
/// sizes up to 4 MiB plus the edges (empty, one byte, each pipe size and one past it).
#[test]
fn many_concurrent_connections_are_byte_exact() {
    let backend = Backend::unix(Reply::Echo);
    let mut sizes: Vec<usize> = vec![
        64 << 20,
        64 << 20,
        0,
        1,
        256 << 10,
        (256 << 10) + 1,
        1 << 20,
        (1 << 20) + 1,
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while sizes.len() < 24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push((x % (4 << 20)) as usize);
    }
    for driver in DRIVERS {
        let (ringsock, addr) = proxy(driver, &[], &backend.target);
        let clients: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let stream = connect_tcp(addr);
                std::thread::spawn(move || {
                    echo_transfer(stream, len, i * 7919, None)
                        .map_err(|e| format!("connection {i} ({len} bytes): {e}"))
                })
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .filter_map(|c| c.join().unwrap().err())
            .collect();
        assert!(
            failures.is_empty(),
            "{driver:?}: {failures:#?}\n{}",
            ringsock.stderr()
        );
        ringsock.stop();
    }
}

/// Request/response traffic on one long-lived connection: round trips whose sizes swing
/// between a byte and 128 KiB (across 16 KiB and 64 KiB, where a forwarder may switch
/// between copying and splicing), every reply checked.
#[test]
fn round_trips_of_changing_sizes_on_one_connection() {
    let backend = Backend::unix(Reply::Echo);
    let sizes = [
        1usize, 64, 1000, 16383, 16384, 16385, 7, 65536, 65537, 131072, 3, 20000,
    ];
    for driver in DRIVERS {
        let (ringsock, addr) = proxy(driver, &[], &backend.target);
        let mut client = connect_tcp(addr);
        for round in 0..15 {
            for (i, &len) in sizes.iter().enumerate() {
                let data = pattern(len, (round * sizes.len() + i) as u64 + 1);
                let reply = round_trip(&mut client, &data)
                    .unwrap_or_else(|e| panic!("{driver:?}: round {round}, {len} bytes: {e}"));
                assert!(
                    reply == data,
                    "{driver:?}: round {round}, the {len}-byte reply differs"
                );
            }
        }
        client.shutdown(Shutdown::Write).unwrap();
        closed_without_data(&mut client).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
        ringsock.stop();
    }
}

/// The client sends, half-closes and only then reads; the backend answers only after
/// EOF. systemd-socket-proxyd closes instead of half-closing and this reply is lost.
#[test]
fn a_reply_sent_after_the_client_half_closed_arrives() {
    for backend in [
        Backend::unix(Reply::AfterEof),
        Backend::tcp("127.0.0.1:0", Reply::AfterEof),
    ] {
        for driver in DRIVERS {
            let (ringsock, addr) = proxy(driver, &[], &backend.target);
            for (i, len) in [0usize, 18, 3 << 20].into_iter().enumerate() {
                let data = pattern(len, i as u64 + 1);
                let mut stream = connect_tcp(addr);
                stream.write_all(&data).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                let mut reply = Vec::new();
                stream
                    .read_to_end(&mut reply)
                    .unwrap_or_else(|e| panic!("{driver:?} {}: {e}", backend.target));
                assert!(
                    reply == data,
                    "{driver:?} to {}: reply of {} bytes, expected the {len} sent",
                    backend.target,
                    reply.len()
                );
            }
            ringsock.stop();
        }
    }
}

/// A backend that answers early and closes while the client is still sending (an
/// HTTP server refusing an upload, say): the client's writes fail or are dropped, but
/// the answer arrives whole, even for a client that only reads once it has written
/// everything, and then half-closes. Sending to a closed backend used to cut the
/// connection at once, losing most of the answer (93 KB of 1 MB arrived).
#[test]
fn a_backend_that_answers_early_and_closes_is_heard_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("early.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let answer = pattern(1 << 20, 9);
    let served = {
        let answer = answer.clone();
        std::thread::spawn(move || {
            for _ in 0..2 * DRIVERS.len() {
                let (mut conn, _) = listener.accept().unwrap();
                let mut head = [0u8; 10];
                conn.read_exact(&mut head).unwrap();
                conn.write_all(&answer).unwrap();
                // Closed with the client's further bytes unread.
            }
        })
    };
    for (driver, half_close) in DRIVERS.into_iter().flat_map(|d| [(d, false), (d, true)]) {
        let (ringsock, addr) = proxy(driver, &[], path.to_str().unwrap());
        let mut client = connect_tcp(addr);
        client
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client.write_all(b"0123456789").unwrap();
        // Write everything first, as a simple client does; stop at the first error.
        let chunk = vec![b'u'; 1 << 16];
        for _ in 0..256 {
            if client.write_all(&chunk).is_err() {
                break;
            }
        }
        if half_close {
            let _ = client.shutdown(Shutdown::Write);
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // The upload was cut, and the client is told so once it has the answer.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{driver:?}: reading the answer: {e}"),
            }
        }
        assert!(
            got == answer,
            "{driver:?} (half-closed: {half_close}): {} bytes of the {}-byte answer arrived",
            got.len(),
            answer.len()
        );
        ringsock.stop();
    }
    served.join().unwrap();
}

/// The mirror case: the backend half-closes first (a banner, then EOF) and keeps reading;
/// the client sees the EOF and can still send everything it has.
#[test]
fn the_backend_may_half_close_first() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banner.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let backend = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            conn.write_all(b"banner").unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).map(|_| got)
        });
        let (ringsock, addr) = proxy(driver, &[], path.to_str().unwrap());
        let mut client = connect_tcp(addr);
        let mut banner = Vec::new();
        client
            .read_to_end(&mut banner)
            .unwrap_or_else(|e| panic!("{driver:?}: {e}"));
        assert_eq!(banner, b"banner", "{driver:?}");
        let data = pattern(1 << 20, 3);
        client
            .write_all(&data)
            .unwrap_or_else(|e| panic!("{driver:?}: sending after the backend's EOF: {e}"));
        client.shutdown(Shutdown::Write).unwrap();
        let got = backend
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{driver:?}: backend: {e}"));
        assert!(
            got == data,
            "{driver:?}: backend got {} bytes, expected the {} sent",
            got.len(),
            data.len()
        );
        ringsock.stop();
    }
}

/// Every TARGET form: TCP v4, a host name, TCP v6 as
/// `[::1]:port` and as systemd's `::1:port`, a Unix path and an abstract name.
#[test]
fn forwards_to_every_kind_of_target() {
    let v4 = Backend::tcp("127.0.0.1:0", Reply::Echo);
    let v6 = Backend::tcp("[::1]:0", Reply::Echo);
    let unix = Backend::unix(Reply::Echo);
    let abstract_ = Backend::abstract_name(Reply::Echo);
    let v4_port = v4.target.rsplit_once(':').unwrap().1;
    let v6_port = v6.target.rsplit_once(':').unwrap().1;
    let targets = [
        (&v4, v4.target.clone()),
        (&v4, format!("localhost:{v4_port}")),
        (&v6, v6.target.clone()),
        (&v6, format!("::1:{v6_port}")),
        (&unix, unix.target.clone()),
        (&abstract_, abstract_.target.clone()),
    ];
    for driver in DRIVERS {
        for (backend, target) in &targets {
            let before = backend.accepted();
            let (ringsock, addr) = proxy(driver, &[], target);
            echo_transfer(connect_tcp(addr), 1 << 20, 11, None)
                .unwrap_or_else(|e| panic!("{driver:?} to {target}: {e}"));
            assert_eq!(
                backend.accepted(),
                before + 1,
                "{driver:?}: {target} is not where the bytes went"
            );
            ringsock.stop();
        }
    }
}

/// A host-name TARGET, with what the name resolves to chosen by the test: an /etc/hosts
/// of its own, bind-mounted in ringsock's own mount namespace.
///
/// 1. The name has two addresses; one refuses (bound, not listening), the other listens.
///    Two such pairs, in opposite roles, so that whatever order the resolver returns,
///    one of them makes ringsock pass over a refusing first address.
/// 2. The file is rewritten to the second pair while ringsock runs: once a lookup's
///    answer has aged out (a second), new connections go to the new address.
#[test]
fn a_host_name_target_tries_every_address_and_follows_changes() {
    if !can_make_mount_namespace() {
        eprintln!("skipped: making a mount namespace needs root or CAP_SYS_ADMIN");
        return;
    }
    let (port, sockets) = one_port_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let [refusing_2, listening_3, listening_4, refusing_5] = sockets;
    let (first, second) = (
        Backend::tcp_on(listen(listening_3), Reply::Echo),
        Backend::tcp_on(listen(listening_4), Reply::Echo),
    );
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let point_at = |addrs: [&str; 2]| {
        let text: String = addrs
            .iter()
            .map(|a| format!("{a} backend.test\n"))
            .collect();
        // In place (same inode): the bind mount shows the file, not the name.
        std::fs::write(&hosts, text).unwrap();
    };
    let target = format!("backend.test:{port}");
    for driver in DRIVERS {
        point_at(["127.0.0.2", "127.0.0.3"]);
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", &target])
            .listen(listen)
            .driver(driver)
            .hosts(&hosts)
            .start();
        ringsock.expect_driver(driver);
        let before = (first.accepted(), second.accepted());
        echo_transfer(connect_tcp(addr), 1 << 16, 1, None)
            .unwrap_or_else(|e| panic!("{driver:?}: through 127.0.0.2/.3: {e}"));
        assert_eq!(
            (first.accepted(), second.accepted()),
            (before.0 + 1, before.1),
            "{driver:?}: the name pointed at 127.0.0.3 (and the refusing 127.0.0.2)"
        );

        point_at(["127.0.0.4", "127.0.0.5"]);
        // The test is what a name resolves to once a second has passed: let it pass.
        std::thread::sleep(Duration::from_millis(1500));
        echo_transfer(connect_tcp(addr), 1 << 16, 2, None)
            .unwrap_or_else(|e| panic!("{driver:?}: through 127.0.0.4/.5: {e}"));
        assert_eq!(
            (first.accepted(), second.accepted()),
            (before.0 + 1, before.1 + 1),
            "{driver:?}: a second after /etc/hosts changed, the name pointed at 127.0.0.4"
        );
        ringsock.stop();
    }
    drop((refusing_2, refusing_5));
}

/// Sockets bound to the same free TCP port on each of `ips`, none listening yet (so each
/// refuses connections until [`listen`]).
fn one_port_on<const N: usize>(ips: &[&str; N]) -> (u16, [socket2::Socket; N]) {
    let bind = |ip: &str, port: u16| {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&addr.into()).map(|()| socket)
    };
    for _ in 0..100 {
        let first = bind(ips[0], 0).unwrap();
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let mut sockets = vec![first];
        for ip in &ips[1..] {
            match bind(ip, port) {
                Ok(socket) => sockets.push(socket),
                Err(_) => break,
            }
        }
        if let Ok(sockets) = sockets.try_into() {
            return (port, sockets);
        }
    }
    panic!("no TCP port free on all of {ips:?}");
}

fn listen(socket: socket2::Socket) -> std::net::TcpListener {
    socket.listen(128).unwrap();
    socket.into()
}

/// TCP v4, TCP v6 and Unix listeners at once, each logged with its LISTEN_FDNAMES name
/// and each forwarding.
#[test]
fn serves_several_listeners_with_their_names() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        let (v4, v4_addr) = Listen::tcp();
        let (v6, v6_addr) = Listen::tcp6();
        let ringsock = Spawn::new(&["proxy", &backend.target])
            .listen(v4)
            .listen(v6)
            .listen(Listen::unix(&path))
            .names("web:web6:local")
            .driver(driver)
            .start();
        ringsock.expect_driver(driver);
        ringsock.wait_for_log(&format!("listening on {v4_addr} (web)"), LOG);
        ringsock.wait_for_log(&format!("listening on {v6_addr} (web6)"), LOG);
        ringsock.wait_for_log(&format!("listening on {} (local)", path.display()), LOG);
        echo_transfer(connect_tcp(v4_addr), 1 << 20, 1, None)
            .unwrap_or_else(|e| panic!("{driver:?} v4: {e}"));
        echo_transfer(connect_tcp(v6_addr), 1 << 20, 2, None)
            .unwrap_or_else(|e| panic!("{driver:?} v6: {e}"));
        echo_transfer(connect_unix(&path), 1 << 20, 3, None)
            .unwrap_or_else(|e| panic!("{driver:?} unix: {e}"));
        ringsock.stop();
    }
}

/// With the target down the client is accepted and then reset (not a clean EOF it could
/// take for an empty reply); once the target is up, the next client is served.
#[test]
fn a_target_that_is_down_resets_the_client_and_serving_goes_on() {
    for driver in DRIVERS {
        for unix in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("later.sock");
            let port = ClosedPort::new();
            let target = if unix {
                path.to_str().unwrap().to_string()
            } else {
                port.addr.to_string()
            };
            let (ringsock, addr) = proxy(driver, &[], &target);
            expect_reset(addr).unwrap_or_else(|e| panic!("{driver:?} to {target}: {e}"));
            ringsock.wait_for_log("failed to connect", LOG);
            let backend = if unix {
                Backend::unix_at(&path, Reply::Echo)
            } else {
                Backend::tcp_on(port.open(), Reply::Echo)
            };
            echo_transfer(connect_tcp(addr), 1 << 20, 5, None)
                .unwrap_or_else(|e| panic!("{driver:?} to {target}: {e}"));
            assert_eq!(backend.accepted(), 1);
            ringsock.stop();
        }
    }
}

/// A reset on either side reaches the other as a reset, never as a clean EOF that
/// would pass a cut stream off as complete.
#[test]
fn a_reset_on_one_side_resets_the_other() {
    let abort = |stream: TcpStream| {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    };
    for driver in DRIVERS {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = backend.local_addr().unwrap().to_string();
        let (ringsock, addr) = proxy(driver, &[], &target);
        for backend_resets in [true, false] {
            let mut client = connect_tcp(addr);
            client.write_all(b"hello").unwrap();
            let mut upstream = accept_within(&backend, LOG);
            let mut got = [0u8; 5];
            upstream.read_exact(&mut got).unwrap();
            let (mut survivor, side) = if backend_resets {
                abort(upstream);
                (client, "client")
            } else {
                abort(client);
                (upstream, "backend")
            };
            let mut buf = [0u8; 16];
            let result = survivor.read(&mut buf);
            assert!(
                matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset),
                "{driver:?}: the {side} got {result:?}, expected a reset"
            );
        }
        ringsock.stop();
    }
}

/// A Unix backend whose backlog is full answers a non-blocking connect with EAGAIN;
/// ringsock retries until --connect-timeout, then resets the client; a client whose
/// retries outlast the full queue is served.
#[test]
fn connect_timeout_gives_up_on_a_backend_that_never_accepts() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Backlog 0 holds exactly one pending connection: fill it and the queue is full.
        // SAFETY: listen(2) again on our own listening socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let filler = UnixStream::connect(&path).unwrap();
        let (ringsock, addr) = proxy(
            driver,
            &["--connect-timeout", "500ms"],
            path.to_str().unwrap(),
        );

        let mut client = connect_tcp(addr);
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let result = client.read(&mut buf);
        let waited = start.elapsed();
        assert!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{driver:?}: expected a reset, got {result:?}"
        );
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
            "{driver:?}: reset after {waited:?}, --connect-timeout is 500ms"
        );
        ringsock.wait_for_log("--connect-timeout); its listen backlog stayed full", LOG);

        ringsock.stop();

        // Busy, not gone: with a longer timeout a client arriving while the queue is
        // full is held until the backend accepts again, then served.
        let (ringsock, addr) = proxy(
            driver,
            &["--connect-timeout", "10s"],
            path.to_str().unwrap(),
        );
        let idle_sockets = ringsock.open_sockets();
        let stream = connect_tcp(addr);
        let transfer = std::thread::spawn(move || echo_transfer(stream, 64 << 10, 9, None));
        // Accepted means its connect is under way, and failing with EAGAIN for as long
        // as the queue stays full.
        wait_until(
            LOG,
            || (ringsock.open_sockets() > idle_sockets).then_some(()),
            || format!("{driver:?}: the client was never accepted"),
        );
        // The backend accepts again: the filler, then whoever comes next.
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let conn = conn.unwrap();
                std::thread::spawn(move || echo(conn));
            }
        });
        transfer
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{driver:?}: held client: {e}"));
        drop(filler);
        ringsock.stop();
    }
}

/// `-c 2`: exactly two connections are forwarded; the third waits in the backlog (its
/// bytes go nowhere) until one of the two closes, and is then served.
/// systemd-socket-proxyd would accept it and, being off by one, forward it.
#[test]
fn connections_max_is_exact() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let before = backend.accepted();
        let (ringsock, addr) = proxy(driver, &["-c", "2"], &backend.target);
        let mut a = connect_tcp(addr);
        let mut b = connect_tcp(addr);
        assert_eq!(round_trip(&mut a, b"a").unwrap(), b"a", "{driver:?}");
        assert_eq!(round_trip(&mut b, b"b").unwrap(), b"b", "{driver:?}");

        let mut c = connect_tcp(addr);
        c.write_all(b"c").unwrap();
        assert_silent(
            &mut c,
            Duration::from_millis(500),
            "third connection with -c 2",
        );
        assert_eq!(backend.accepted() - before, 2, "{driver:?}");

        drop(a);
        let mut got = [0u8; 1];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{driver:?}: third connection never served: {e}"));
        assert_eq!(&got, b"c");
        assert_eq!(backend.accepted() - before, 3, "{driver:?}");

        // The limit holds again with b and c open.
        let mut d = connect_tcp(addr);
        d.write_all(b"d").unwrap();
        assert_silent(
            &mut d,
            Duration::from_millis(300),
            "fourth connection with two open",
        );
        drop(b);
        d.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{driver:?}: fourth connection never served: {e}"));
        assert_eq!(&got, b"d");
        assert_eq!(round_trip(&mut c, b"still").unwrap(), b"still");

        drop((c, d));
        ringsock.stop();
    }
}

/// Out of fds (RLIMIT_NOFILE 48, 40 clients of two sockets each, `-c` above what fits):
/// no client is accepted only to be reset. One that got no fd for the target is held
/// and retried, accepting waits until a connection closes (the backlog holds the rest,
/// as at --connections-max), the log says so, and every client is served in turn.
/// It used to reset 797 of 1,000 such clients.
#[test]
fn out_of_fds_holds_clients_in_the_backlog_instead_of_resetting_them() {
    const CLIENTS: usize = 40;
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", "-c", "1000", &backend.target])
            .listen(listen)
            .driver(driver)
            .fd_limit(48)
            .start();
        ringsock.expect_driver(driver);
        let mut clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|i| {
                let mut client = connect_tcp(addr);
                client.write_all(&[b'a' + i as u8]).unwrap();
                client
            })
            .collect();
        ringsock.wait_for_log("out of file descriptors connecting to", LOG);
        // Whoever is served answers and goes; each one gone gives fds back for the next.
        for client in &clients {
            client.set_nonblocking(true).unwrap();
        }
        let mut waiting: Vec<(usize, TcpStream)> = clients.drain(..).enumerate().collect();
        let served = within(3 * LOG, || {
            waiting.retain_mut(|(i, client)| {
                let mut echo = [0u8; 1];
                match client.read(&mut echo) {
                    Ok(1) => {
                        assert_eq!(echo[0], b'a' + *i as u8, "{driver:?}: client {i}");
                        false
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                    other => panic!(
                        "{driver:?}: client {i} got {other:?} instead of its echo\n{}",
                        ringsock.stderr()
                    ),
                }
            });
            waiting.is_empty().then_some(())
        });
        assert!(
            served.is_some(),
            "{driver:?}: {} clients never served\n{}",
            waiting.len(),
            ringsock.stderr()
        );
        let mut client = connect_tcp(addr);
        assert_eq!(
            round_trip(&mut client, b"again")
                .unwrap_or_else(|e| panic!("{driver:?}: {e}\n{}", ringsock.stderr())),
            b"again"
        );
        drop(client);
        ringsock.stop();
    }
}

/// Each connection costs up to four fds, so the soft RLIMIT_NOFILE (1024 by default) is
/// raised to the hard limit at start.
#[test]
fn raises_the_soft_fd_limit_to_the_hard_one() {
    let backend = Backend::unix(Reply::Echo);
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", &backend.target])
        .listen(listen)
        .fd_limits(64, 4096)
        .start();
    ringsock.wait_for_log("raised the open file limit from 64 to 4096", LOG);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", ringsock.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["4096", "4096"],
        "{line}"
    );
    ringsock.stop();
}

/// `--exit-idle-time 1s`: an open connection keeps it running past the idle time; after
/// the last close it exits 0 about a second later.
#[test]
fn exit_idle_time_counts_from_the_last_close() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (listen, addr) = Listen::tcp();
        // Connected before ringsock starts: the connection waits in the backlog, so the
        // idle clock cannot run out before ringsock sees it.
        let mut client = connect_tcp(addr);
        let mut ringsock = Spawn::new(&["proxy", "--exit-idle-time", "1s", &backend.target])
            .listen(listen)
            .driver(driver)
            .start();
        ringsock.expect_driver(driver);
        assert_eq!(round_trip(&mut client, b"x").unwrap(), b"x");
        // Nothing to wait on: the test is that nothing happens while the connection is open.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            ringsock.exited().is_none(),
            "{driver:?}: exited with a connection open:\n{}",
            ringsock.stderr()
        );
        assert_eq!(round_trip(&mut client, b"y").unwrap(), b"y");

        drop(client);
        let closed = Instant::now();
        ringsock.wait_clean_exit(Duration::from_secs(10), driver);
        let after = closed.elapsed();
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_secs(4),
            "{driver:?}: exited {after:?} after the last close, --exit-idle-time is 1s"
        );
        assert!(
            ringsock.stderr().contains("--exit-idle-time"),
            "{}",
            ringsock.stderr()
        );
    }
}

/// SIGTERM with three 8 MiB transfers half done: they complete byte-exact, a client
/// connecting after the signal is never forwarded, and the exit code is 0.
#[test]
fn sigterm_lets_open_transfers_finish_and_accepts_no_more() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let before = backend.accepted();
        let (mut ringsock, addr) = proxy(driver, &[], &backend.target);
        let (reached_tx, reached_rx) = mpsc::channel();
        let mut go = Vec::new();
        let transfers: Vec<_> = (0..3)
            .map(|i| {
                let (go_tx, go_rx) = mpsc::channel();
                go.push(go_tx);
                let gate = Gate {
                    at: 1 << 20,
                    reached: reached_tx.clone(),
                    go: go_rx,
                };
                let stream = connect_tcp(addr);
                std::thread::spawn(move || echo_transfer(stream, 8 << 20, i * 101, Some(gate)))
            })
            .collect();
        for _ in 0..3 {
            reached_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("transfers never got going");
        }
        backend.wait_accepted(before + 3, LOG);

        ringsock.signal(libc::SIGTERM);
        ringsock.wait_for_log(
            "received SIGTERM; shutting down with 3 connections open",
            LOG,
        );
        // The listening sockets close as shutdown begins: a late client is refused, or
        // (caught in a worker's backlog just then) reset, while the drain still runs,
        // instead of waiting for it; either way it never reaches the backend.
        if let Ok(mut late) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = late.write_all(b"late");
            closed_without_data(&mut late)
                .unwrap_or_else(|e| panic!("{driver:?}: late client during the drain: {e}"));
        }
        drop(go);
        for (i, t) in transfers.into_iter().enumerate() {
            t.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{driver:?}: transfer {i} after SIGTERM: {e}"));
        }
        ringsock.wait_clean_exit(Duration::from_secs(20), driver);
        assert_eq!(
            backend.accepted() - before,
            3,
            "{driver:?}: a connection made after SIGTERM was forwarded"
        );
    }
}

/// `--shutdown-timeout 1s` with a connection that never finishes: exit 0 after ~1s, and
/// the client is reset: the end of a stream cut short must not look like its end.
#[test]
fn shutdown_timeout_bounds_the_drain() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (mut ringsock, addr) = proxy(driver, &["--shutdown-timeout", "1s"], &backend.target);
        let mut client = connect_tcp(addr);
        assert_eq!(round_trip(&mut client, b"x").unwrap(), b"x");
        ringsock.signal(libc::SIGTERM);
        let start = Instant::now();
        ringsock.wait_clean_exit(Duration::from_secs(10), driver);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{driver:?}: exited {took:?} after SIGTERM, --shutdown-timeout is 1s"
        );
        assert!(
            ringsock.stderr().contains("--shutdown-timeout"),
            "{}",
            ringsock.stderr()
        );
        expect_reset_on(&mut client).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
    }
}

/// A second SIGTERM (or SIGINT) during the drain stops waiting: open connections are
/// reset at once and the exit is still clean, as with --shutdown-timeout reached.
#[test]
fn a_second_signal_cuts_the_drain_short() {
    let backend = Backend::unix(Reply::Echo);
    for (driver, second) in [
        (Driver::IoUring, libc::SIGTERM),
        (Driver::Epoll, libc::SIGINT),
    ] {
        let (mut ringsock, addr) = proxy(driver, &["--shutdown-timeout", "1h"], &backend.target);
        let mut client = connect_tcp(addr);
        assert_eq!(round_trip(&mut client, b"x").unwrap(), b"x");
        ringsock.signal(libc::SIGTERM);
        ringsock.wait_for_log("shutting down with 1 connections open", LOG);
        let start = Instant::now();
        ringsock.signal(second);
        ringsock.wait_clean_exit(Duration::from_secs(10), driver);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{driver:?}: took {:?} after the second signal",
            start.elapsed()
        );
        assert!(ringsock
            .stderr()
            .contains("again; cutting 1 open connections"));
        expect_reset_on(&mut client).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
    }
}

/// What a client reads from a connection that was cut must be a reset.
fn expect_reset_on(client: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!("expected a reset, got {other:?}")),
    }
}

/// One worker, two connections: a client that stops reading while its backend floods
/// it must not stall the other client on the same worker, and once it reads again it
/// gets every byte.
#[test]
fn a_client_that_stops_reading_stalls_no_one_else() {
    const FLOOD: usize = 32 << 20;
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flood.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let progress = written.clone();
        // The first byte picks the behaviour: 'f' floods, anything else is echoed.
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let mut conn = conn.unwrap();
                let progress = progress.clone();
                std::thread::spawn(move || {
                    let mut first = [0u8; 1];
                    conn.read_exact(&mut first).unwrap();
                    if &first == b"f" {
                        let _ = write_pattern(&mut conn, FLOOD, 77, &progress);
                        let _ = conn.shutdown(Shutdown::Write);
                    } else {
                        conn.write_all(&first).unwrap();
                        echo(conn);
                    }
                });
            }
        });
        let (ringsock, addr) = proxy(driver, &["--threads", "1"], path.to_str().unwrap());

        let mut flooded = connect_tcp(addr);
        flooded.write_all(b"f").unwrap();
        // Stalled: every buffer on the way is full and the count stops moving (for the
        // 100 ms between two looks).
        let mut before = usize::MAX;
        let last = poll_every(Duration::from_millis(100), LOG, || {
            let now = written.load(Ordering::SeqCst);
            let stalled = now == before && now > 0;
            before = now;
            stalled.then_some(now)
        })
        .unwrap_or_else(|| {
            let now = written.load(Ordering::SeqCst);
            panic!("{driver:?}: the flood never stalled ({now} bytes)")
        });
        assert!(
            last < FLOOD,
            "{driver:?}: {last} bytes went through a client that reads nothing"
        );

        let mut other = connect_tcp(addr);
        for i in 0..50 {
            let data = pattern(1 + i * 1000, i as u64 + 1);
            let reply = round_trip(&mut other, &data)
                .unwrap_or_else(|e| panic!("{driver:?}: round trip {i} stalled: {e}"));
            assert!(reply == data, "{driver:?}: round trip {i}");
        }
        drop(other);

        read_pattern(flooded, FLOOD, 77)
            .unwrap_or_else(|e| panic!("{driver:?}: the flooded client: {e}"));
        ringsock.stop();
    }
}

/// `--threads N` runs exactly N workers (named ringsock-wN), each forwarding.
#[test]
fn threads_flag_sets_the_worker_count() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        for n in [1usize, 3] {
            let (ringsock, addr) = proxy(driver, &["--threads", &n.to_string()], &backend.target);
            ringsock.wait_for_log(&format!("driver on {n} worker thread"), LOG);
            let workers = thread_names(ringsock.pid())
                .iter()
                .filter(|name| name.starts_with("ringsock-w"))
                .count();
            assert_eq!(workers, n, "{driver:?}: {:?}", thread_names(ringsock.pid()));
            // More connections than workers, all at once, so every worker gets some.
            let clients: Vec<_> = (0..2 * n)
                .map(|i| {
                    let stream = connect_tcp(addr);
                    std::thread::spawn(move || echo_transfer(stream, 256 << 10, i, None))
                })
                .collect();
            for c in clients {
                c.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{driver:?} --threads {n}: {e}"));
            }
            ringsock.stop();
        }
    }
}

/// SIGINT (Ctrl-C in a terminal) stops as gracefully as SIGTERM.
#[test]
fn sigint_stops_gracefully() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (mut ringsock, addr) = proxy(driver, &[], &backend.target);
        let mut client = connect_tcp(addr);
        assert_eq!(round_trip(&mut client, b"x").unwrap(), b"x");
        ringsock.signal(libc::SIGINT);
        ringsock.wait_for_log(
            "received SIGINT; shutting down with 1 connections open",
            LOG,
        );
        // The open connection still works until its client is done.
        assert_eq!(round_trip(&mut client, b"y").unwrap(), b"y");
        drop(client);
        ringsock.wait_clean_exit(LOG, driver);
    }
}

/// 200 idle proxied connections: waiting is done with readiness (POLL_ADD or epoll), so
/// no io_uring worker thread (iou-wrk) sleeps on a socket for any of them; and an idle
/// connection holds no pipe (pipes are taken only while bytes are in flight).
#[test]
fn idle_connections_hold_no_threads() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let (ringsock, addr) = proxy(driver, &[], &backend.target);
        let clients: Vec<TcpStream> = (0..200)
            .map(|i| {
                let mut client = connect_tcp(addr);
                let byte = [i as u8];
                assert_eq!(round_trip(&mut client, &byte).unwrap(), byte, "{driver:?}");
                client
            })
            .collect();
        let threads = ringsock.threads();
        assert!(
            threads < 16,
            "{driver:?}: {threads} threads for 200 idle connections: {:?}",
            thread_names(ringsock.pid())
        );
        // Emptied pipes may wait in the per-worker pool, but no more than were in flight
        // at once (a round trip at a time here), never two per connection.
        let pipe_fds = ringsock.open_fds("pipe:");
        assert!(
            pipe_fds <= 16,
            "{driver:?}: {pipe_fds} pipe fds for 200 idle connections"
        );
        drop(clients);
        ringsock.stop();
    }
}

fn thread_names(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// Under journald (JOURNAL_STREAM set) every line carries a syslog priority.
#[test]
fn journal_stream_gets_syslog_priorities() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sock");
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", missing.to_str().unwrap()])
            .listen(listen)
            .driver(driver)
            .env("JOURNAL_STREAM", "8:12345")
            .start();
        ringsock.expect_driver(driver);
        expect_reset(addr).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
        ringsock.wait_for_log("failed to connect", LOG);
        let log = ringsock.stop();
        for line in log.lines() {
            let b = line.as_bytes();
            assert!(
                b.len() > 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>',
                "{driver:?}: {line:?}"
            );
        }
        assert!(
            log.lines().any(|l| l.starts_with("<6>listening on")),
            "{log}"
        );
        assert!(
            log.lines().any(|l| l.starts_with("<4>failed to connect")),
            "{log}"
        );
    }
}

/// `--idle-timeout`: a connection on which nothing moves is cut; one that keeps talking
/// is left alone.
#[test]
fn idle_timeout_cuts_a_silent_connection_and_spares_a_busy_one() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr) = proxy(
            driver,
            &["--idle-timeout", "1s"],
            backend.path.to_str().unwrap(),
        );
        let mut silent = connect_tcp(addr);
        let mut busy = connect_tcp(addr);
        busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        for _ in 0..12 {
            busy.write_all(b"ping").unwrap();
            let mut reply = [0u8; 4];
            busy.read_exact(&mut reply)
                .expect("the busy connection was cut");
            // Pings 200 ms apart, well inside the 1 s idle timeout, for 2.4 s.
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(start.elapsed() >= Duration::from_millis(2400));
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let ended = match silent.read(&mut [0u8; 8]) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        assert!(
            ended,
            "{driver:?}: a silent connection outlived --idle-timeout 1s"
        );
        drop(busy);
        ringsock.stop();
    }
}

/// The TCP timer /proc/net/tcp shows for the established socket whose local port is
/// `port` ("02": keepalive), if there is one.
fn tcp_timer(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
        (local_port == port && f[3] == "01").then(|| f[5].split(':').next().unwrap().to_string())
    })
}

#[test]
fn keepalive_is_set_on_the_client_socket_only_when_asked() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        for (flag, timer) in [(None, "00"), (Some("--keepalive"), "02")] {
            let args: Vec<&str> = flag.into_iter().collect();
            let (ringsock, addr) = proxy(driver, &args, backend.path.to_str().unwrap());
            let mut client = connect_tcp(addr);
            client.write_all(b"x").unwrap();
            let mut reply = [0u8; 1];
            client.read_exact(&mut reply).unwrap();
            assert_eq!(
                tcp_timer(addr.port()).as_deref(),
                Some(timer),
                "{driver:?} {flag:?}"
            );
            drop(client);
            ringsock.stop();
        }
    }
}

/// Starts `ringsock proxy ARGS.. TARGET` with two activated sockets, one forwarding and
/// one named `metrics`; returns the two addresses in that order.
pub fn proxy_with_metrics(
    driver: Driver,
    args: &[&str],
    target: &str,
) -> (Ringsock, SocketAddr, SocketAddr) {
    let ((web, addr), (metrics, metrics_addr)) = (Listen::tcp(), Listen::tcp());
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
    (ringsock, addr, metrics_addr)
}

/// GETs the proxy's metrics from `addr` (as Prometheus would) and returns the body.
pub fn scrape(addr: SocketAddr) -> String {
    let mut s = connect_tcp(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

pub fn metric_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `--metrics ADDR` and an activated socket named `metrics` answer Prometheus text whose
/// counts match a known workload, and STATUS= follows them.
#[test]
fn metrics_count_a_known_workload() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let notify = NotifySocket::new();
        let metrics_port = free_port("127.0.0.1");
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&[
            "proxy",
            "--metrics",
            &metrics_addr.to_string(),
            backend.path.to_str().unwrap(),
        ])
        .listen(listen)
        .env("NOTIFY_SOCKET", notify.env_value())
        .driver(driver)
        .start();
        ringsock.wait_for_log("listening on 127.0.0.1", LOG);
        for seed in 0..3 {
            echo_transfer(connect_tcp(addr), 1000, seed, None).expect("echo");
        }
        let text = wait_until(
            LOG,
            || {
                let text = scrape(metrics_addr);
                (metric_value(&text, "ringsock_connections_open") == 0).then_some(text)
            },
            || "the three connections never closed".into(),
        );
        // Three forwarded connections; scrapes are not connections of the proxy's.
        assert_eq!(
            metric_value(&text, "ringsock_connections_accepted_total"),
            3,
            "{driver:?}"
        );
        assert_eq!(
            metric_value(&text, "ringsock_proxy_bytes_total{direction=\"to_target\"}"),
            3000
        );
        assert_eq!(
            metric_value(&text, "ringsock_proxy_bytes_total{direction=\"to_client\"}"),
            3000
        );
        assert_eq!(metric_value(&text, "ringsock_proxy_resets_total"), 0);
        notify.expect("STATUS=Forwarding to", LOG);
        notify.expect("accepted, 0 connect failures, 0 resets", LOG);
        ringsock.stop();
    }
    // A target that refuses: counted by cause; a socket named `metrics` serves them.
    let closed = ClosedPort::new();
    let (web, web_addr) = Listen::tcp();
    let (metrics, metrics_addr) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", &closed.addr.to_string()])
        .listen(web)
        .listen(metrics)
        .names("web:metrics")
        .start();
    for _ in 0..2 {
        // The reset for "no backend" can beat connect(2)'s own return: either way the
        // proxy took the connection and tried the target.
        if let Ok(mut c) = TcpStream::connect_timeout(&web_addr, Duration::from_secs(5)) {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.read(&mut [0u8; 8]);
        }
    }
    let refused = wait_until(
        LOG,
        || {
            let text = scrape(metrics_addr);
            let n = metric_value(
                &text,
                "ringsock_proxy_connect_failures_total{cause=\"refused\"}",
            );
            (n >= 2).then_some(n)
        },
        || "the refused connects were never counted".into(),
    );
    assert_eq!(refused, 2);
    ringsock.stop();
}

/// The byte counters move while a connection is open, not only when it ends: 6.5 MB
/// echoed over a connection that stays open show in `/metrics` in both directions, and
/// some of them as spliced.
#[test]
fn byte_counters_move_while_a_connection_is_open() {
    const LEN: usize = 6_500_000;
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr, metrics) =
            proxy_with_metrics(driver, &[], backend.path.to_str().unwrap());
        let mut client = connect_tcp(addr);
        let mut writer = client.try_clone().unwrap();
        let sending =
            std::thread::spawn(move || write_pattern(&mut writer, LEN, 3, &AtomicUsize::new(0)));
        let mut echoed = vec![0u8; LEN];
        client.read_exact(&mut echoed).expect("the echo");
        sending.join().unwrap().expect("sending");
        assert!(echoed == pattern_at(3, LEN), "{driver:?}: the echo differs");
        let counted = |text: &str, direction: &str| {
            metric_value(
                text,
                &format!("ringsock_proxy_bytes_total{{direction=\"{direction}\"}}"),
            )
        };
        let text = wait_until(
            LOG,
            || {
                let text = scrape(metrics);
                let both = (counted(&text, "to_target"), counted(&text, "to_client"));
                (both == (LEN as u64, LEN as u64)).then_some(text)
            },
            || {
                format!(
                    "{driver:?}: /metrics never counted the open connection's {LEN} bytes \
                     each way:\n{}",
                    scrape(metrics)
                )
            },
        );
        // The echoed connection (scrapes are not the proxy's connections).
        assert_eq!(
            metric_value(&text, "ringsock_connections_open"),
            1,
            "{driver:?}"
        );
        assert!(
            metric_value(&text, "ringsock_proxy_spliced_bytes_total") > 0,
            "{driver:?}: 13 MB of bulk and nothing spliced:\n{text}"
        );
        drop(client);
        ringsock.stop();
    }
}

/// A TARGET host name that does not resolve is counted as `cause="resolve"`, not as
/// "other". The name has a 70-byte label, which no DNS name may have: glibc refuses it
/// without sending a query, so the test needs no resolver and stays on loopback.
#[test]
fn an_unresolvable_target_counts_as_a_resolve_failure() {
    let host = format!("{}.invalid", "a".repeat(70));
    for driver in DRIVERS {
        let (ringsock, addr, metrics) = proxy_with_metrics(driver, &[], &format!("{host}:80"));
        expect_reset(addr).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
        let failure = |text: &str, cause: &str| {
            metric_value(
                text,
                &format!("ringsock_proxy_connect_failures_total{{cause=\"{cause}\"}}"),
            )
        };
        let text = wait_until(
            LOG,
            || {
                let text = scrape(metrics);
                let counted = failure(&text, "resolve") + failure(&text, "other");
                (counted > 0).then_some(text)
            },
            || format!("{driver:?}: the failed connect was never counted"),
        );
        assert_eq!(failure(&text, "resolve"), 1, "{driver:?}:\n{text}");
        assert_eq!(failure(&text, "other"), 0, "{driver:?}:\n{text}");
        ringsock.wait_for_log("failed to resolve", LOG);
        ringsock.stop();
    }
}
