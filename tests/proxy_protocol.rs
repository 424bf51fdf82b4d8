//! `--proxy-protocol-from`: connections from a trusted balancer start with a PROXY v1 or
//! v2 header, which names the client in `serve`'s access log and is taken off before
//! `proxy` forwards a byte; missing, malformed, truncated and slow headers close the
//! connection and are counted; an untrusted peer's bytes are never read as a header. A
//! real HAProxy with `send-proxy` and `send-proxy-v2` sits in front for the last word.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::serve::{get, serve};
use crate::util::*;

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header: `command` 0x20 LOCAL / 0x21 PROXY, `family` (0x11 TCP4, 0x21 TCP6,
/// 0x31 Unix stream, 0x00 UNSPEC), then the address block and TLVs.
fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[command, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_tcp4_with_tlv() -> Vec<u8> {
    let mut body = vec![203, 0, 113, 9, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x50];
    body.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]); // NOOP TLV
    body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN TLV
    v2(0x21, 0x11, &body)
}

fn v2_tcp6() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    v2(0x21, 0x21, &body)
}

fn v2_unix() -> Vec<u8> {
    let mut body = vec![0u8; 216];
    body[..9].copy_from_slice(b"/run/lb.s");
    v2(0x21, 0x31, &body)
}

/// Sends `header` and a GET on one connection; the status, or `None` if the server
/// closed without an answer.
fn get_after(addr: SocketAddr, header: &[u8], path: &str) -> Option<u16> {
    let mut s = connect_tcp(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `bytes` (maybe nothing, or a header cut short), waits `pause`, and reports
/// whether the server closed the connection, and how long that took.
fn closed_after(addr: SocketAddr, bytes: &[u8], pause: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let mut s = connect_tcp(addr);
    s.write_all(bytes).unwrap();
    std::thread::sleep(pause);
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = [0u8; 64];
    // EOF or a reset (the server closed with our bytes unread) both end it; only a
    // read timeout means it is still open.
    let closed = match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (closed, start.elapsed())
}

/// The refused-header counter, asked for as a trusted peer must: after a header.
fn refused_count(addr: SocketAddr) -> u64 {
    let mut s = connect_tcp(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PROXY UNKNOWN\r\nGET /metrics HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ringsock_proxy_protocol_refused_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in:\n{text}"))
}

#[test]
fn serve_logs_the_client_a_trusted_header_names() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &["--proxy-protocol-from", "127.0.0.0/8", "--access-log", "-"],
        );
        server.file("f.txt", b"hello\n");
        let cases: [(&[u8], &str); 6] = [
            (
                b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 80\r\n",
                "/f.txt?v1-tcp4",
            ),
            (b"PROXY TCP6 2001:db8::7 ::1 56324 80\r\n", "/f.txt?v1-tcp6"),
            (b"PROXY UNKNOWN\r\n", "/f.txt?v1-unknown"),
            (&v2_tcp4_with_tlv(), "/f.txt?v2-tcp4"),
            (&v2_tcp6(), "/f.txt?v2-tcp6"),
            (&v2(0x20, 0x00, &[]), "/f.txt?v2-local"),
        ];
        for (header, path) in cases {
            assert_eq!(
                get_after(server.addr, header, path),
                Some(200),
                "{driver:?} {path}"
            );
        }
        assert_eq!(
            get_after(server.addr, &v2_unix(), "/f.txt?v2-unix"),
            Some(200)
        );
        let stderr = server.ringsock.stop();
        for (client, tag) in [
            ("192.0.2.7", "v1-tcp4"),
            ("2001:db8::7", "v1-tcp6"),
            ("127.0.0.1", "v1-unknown"),
            ("203.0.113.9", "v2-tcp4"),
            ("2001:db8::9", "v2-tcp6"),
            ("127.0.0.1", "v2-local"),
            ("127.0.0.1", "v2-unix"),
        ] {
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("?{tag} ")))
                .unwrap_or_else(|| panic!("{driver:?}: no line for {tag}:\n{stderr}"));
            assert!(
                line.starts_with(&format!("{client} - - [")),
                "{driver:?}: {line}"
            );
        }
    }
}

#[test]
fn bad_headers_from_a_trusted_peer_close_and_are_counted() {
    for driver in DRIVERS {
        let server = serve(driver, &["--proxy-protocol-from", "127.0.0.1"]);
        server.file("f.txt", b"hello\n");
        let before = refused_count(server.addr);
        // A trusted peer must send a header: a plain request is not served.
        assert_eq!(get_after(server.addr, b"", "/f.txt"), None, "{driver:?}");
        assert_eq!(
            get_after(server.addr, b"PROXY TCP4 192.0.2.7 nonsense\r\n", "/f.txt"),
            None
        );
        assert_eq!(
            get_after(
                server.addr,
                b"PROXY TCP4 999.0.2.7 127.0.0.1 1 2\r\n",
                "/f.txt"
            ),
            None
        );
        let mut bad_version = v2_tcp4_with_tlv();
        bad_version[12] = 0x31;
        assert_eq!(
            get_after(server.addr, &bad_version, "/f.txt"),
            None,
            "{driver:?}"
        );
        // Truncated, then the peer goes away.
        assert!(closed_after(server.addr, &v2_tcp4_with_tlv()[..20], Duration::ZERO).0);
        // Slow: half a header, then nothing: closed after the 3 s header timeout.
        let (closed, took) = closed_after(server.addr, b"PROXY TCP4 192.0", Duration::ZERO);
        assert!(closed, "{driver:?}: a slow header was never closed");
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(8),
            "{took:?}"
        );
        let after = refused_count(server.addr);
        assert!(after >= before + 6, "{driver:?}: {before} -> {after}");
        server.ringsock.stop();
    }
}

#[test]
fn an_untrusted_peer_never_has_a_header_parsed() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &["--proxy-protocol-from", "10.0.0.0/8", "--access-log", "-"],
        );
        server.file("f.txt", b"hello\n");
        // The line is the request itself: not HTTP, so refused as such.
        let status = get_after(
            server.addr,
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 80\r\n",
            "/f.txt",
        );
        assert!(matches!(status, Some(400 | 501)), "{driver:?}: {status:?}");
        assert_eq!(server.get(&get("/f.txt")).status, 200);
        let stderr = server.ringsock.stop();
        assert!(!stderr.contains("192.0.2.7 - -"), "{driver:?}:\n{stderr}");
    }
}

#[test]
fn proxy_takes_the_header_off_before_forwarding() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (ringsock, addr) = crate::proxy::proxy(
            driver,
            &["--proxy-protocol-from", "127.0.0.1"],
            backend.path.to_str().unwrap(),
        );
        for header in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 80\r\n"[..],
            &v2_tcp4_with_tlv(),
        ] {
            let mut bytes = header.to_vec();
            bytes.extend_from_slice(b"payload after the header");
            let reply = send_half_close_read(connect_tcp(addr), &bytes);
            assert_eq!(reply, b"payload after the header", "{driver:?}");
        }
        let (closed, _) = closed_after(addr, b"no header here", Duration::ZERO);
        assert!(
            closed,
            "{driver:?}: a connection without a header stayed open"
        );
        ringsock.stop();
    }
}

/// HAProxy (`send-proxy`, `send-proxy-v2`) in front of `ringsock serve`: the access log
/// names the address curl connected from (127.0.0.3), not HAProxy's.
#[test]
fn haproxy_in_front_of_serve() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED haproxy_in_front_of_serve: haproxy is not installed");
        return;
    }
    for driver in DRIVERS {
        let server = serve(
            driver,
            &["--proxy-protocol-from", "127.0.0.1", "--access-log", "-"],
        );
        server.file("f.txt", b"hello\n");
        for (mode, tag) in [("send-proxy", "v1"), ("send-proxy-v2", "v2")] {
            let front = free_port("127.0.0.2");
            let listen = SocketAddr::from(([127, 0, 0, 2], front));
            let mut haproxy = HaProxy::start(
                listen,
                &format!(
                    "  bind {listen}\n  default_backend b\nbackend b\n  server s {} {mode}\n",
                    server.addr
                ),
            );
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10", "--interface", "127.0.0.3"])
                .arg(format!("http://127.0.0.2:{front}/f.txt?haproxy-{tag}"))
                .output()
                .expect("curl");
            haproxy.stop();
            assert_eq!(out.stdout, b"hello\n", "{driver:?} {mode}: {out:?}");
        }
        let stderr = server.ringsock.stop();
        for tag in ["v1", "v2"] {
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("?haproxy-{tag} ")))
                .unwrap_or_else(|| panic!("{driver:?}: no {tag} line:\n{stderr}"));
            assert!(line.starts_with("127.0.0.3 - - ["), "{driver:?}: {line}");
        }
    }
}

/// HAProxy, run by the harness; killed when dropped.
struct HaProxy {
    process: Ringsock,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// HAProxy in HTTP mode with `frontend` (its `bind` on `listen` included) after the
    /// usual defaults; returns once it listens.
    fn start(listen: SocketAddr, frontend: &str) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend f\n{frontend}"
            ),
        )
        .unwrap();
        let process = Spawn::new(&["-db", "-f", config.to_str().unwrap()])
            .program("haproxy")
            .start();
        wait_until(
            Duration::from_secs(10),
            || TcpStream::connect(listen).ok(),
            || format!("haproxy did not listen:\n{}", process.output()),
        );
        HaProxy { process, _dir: dir }
    }

    fn stop(&mut self) {
        self.process.kill();
    }
}

/// `--proxy-protocol-on NAME`: every connection on the socket systemd named NAME carries
/// a header, whoever the peer; a name no socket has is an error that lists the names.
#[test]
fn a_listener_chosen_by_name_requires_the_header() {
    for driver in DRIVERS {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f.txt"), b"hello\n").unwrap();
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&[
            "serve",
            "--root",
            root.path().to_str().unwrap(),
            "--proxy-protocol-on",
            "lb",
            "--access-log",
            "-",
        ])
        .listen(listen)
        .names("lb")
        .driver(driver)
        .start();
        let header = b"PROXY TCP4 198.51.100.4 127.0.0.1 1000 80\r\n";
        assert_eq!(
            get_after(addr, header, "/f.txt?named"),
            Some(200),
            "{driver:?}"
        );
        assert_eq!(get_after(addr, b"", "/f.txt?bare"), None, "{driver:?}");
        let stderr = ringsock.stop();
        assert!(
            stderr.contains("198.51.100.4 - - ["),
            "{driver:?}:\n{stderr}"
        );
    }
    let (listen, _) = Listen::tcp();
    let (status, stderr) = {
        let mut ringsock = Spawn::new(&["serve", "--proxy-protocol-on", "nope"])
            .listen(listen)
            .names("web")
            .start();
        let status = ringsock.wait_exit(Duration::from_secs(10));
        (status, ringsock.stderr())
    };
    assert!(!status.success());
    assert!(
        stderr.contains("--proxy-protocol-on nope: no listening socket has that name; the sockets are named web"),
        "{stderr}"
    );
}

/// Accepts one connection on `listener` and returns its first `len` bytes.
fn first_bytes(listener: &std::net::TcpListener, len: usize) -> Vec<u8> {
    let mut conn = accept_within(listener, Duration::from_secs(10));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).expect("the header and payload");
    buf
}

/// `proxy -p` (systemd-socket-proxyd's flag) sends `PROXY TCP4|TCP6 CLIENT LISTENER
/// CPORT LPORT` first, `PROXY UNKNOWN` for a Unix-socket client; `-p=v2` the binary form.
#[test]
fn proxy_p_sends_the_header_first() {
    for driver in DRIVERS {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = backend.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        let (v4, v4_addr) = Listen::tcp();
        let (v6, v6_addr) = Listen::tcp6();
        let ringsock = Spawn::new(&["proxy", "-p", &target])
            .listen(v4)
            .listen(v6)
            .listen(Listen::unix(&path))
            .driver(driver)
            .start();
        for (addr, family, ip) in [(v4_addr, "TCP4", "127.0.0.1"), (v6_addr, "TCP6", "::1")] {
            let mut client = connect_tcp(addr);
            let port = client.local_addr().unwrap().port();
            client.write_all(b"hello").unwrap();
            let expected = format!("PROXY {family} {ip} {ip} {port} {}\r\nhello", addr.port());
            let got = first_bytes(&backend, expected.len());
            assert_eq!(String::from_utf8_lossy(&got), expected, "{driver:?}");
        }
        let mut unix = connect_unix(&path);
        unix.write_all(b"hello").unwrap();
        assert_eq!(
            first_bytes(&backend, 20),
            b"PROXY UNKNOWN\r\nhello",
            "{driver:?}"
        );
        drop(unix);
        ringsock.stop();

        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", "--proxy-protocol=v2", &target])
            .listen(listen)
            .driver(driver)
            .start();
        let mut client = connect_tcp(addr);
        let port = client.local_addr().unwrap().port();
        client.write_all(b"hello").unwrap();
        let got = first_bytes(&backend, 16 + 12 + 5);
        let mut expected = SIG.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
        expected.extend_from_slice(&port.to_be_bytes());
        expected.extend_from_slice(&addr.port().to_be_bytes());
        expected.extend_from_slice(b"hello");
        assert_eq!(got, expected, "{driver:?}");
        drop(client);
        ringsock.stop();
    }
}

/// A real HAProxy with `accept-proxy` behind `ringsock proxy -p` (v1 and v2) answers
/// with the address curl connected from, 127.0.0.5, not ringsock's.
#[test]
fn haproxy_accept_proxy_behind_proxy_p() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED haproxy_accept_proxy_behind_proxy_p: haproxy is not installed");
        return;
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _haproxy = HaProxy::start(
        listen,
        &format!(
            "  bind {listen} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"%[src]\"\n"
        ),
    );
    let target = listen.to_string();
    for driver in DRIVERS {
        for flag in ["-p", "--proxy-protocol=v2"] {
            let (ringsock, addr) = crate::proxy::proxy(driver, &[flag], &target);
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10", "--interface", "127.0.0.5"])
                .arg(format!("http://{addr}/"))
                .output()
                .expect("curl");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "127.0.0.5",
                "{driver:?} {flag}: {out:?}"
            );
            ringsock.stop();
        }
    }
}
