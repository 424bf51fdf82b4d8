//! `ringsock proxy` under faults, both drivers, TCP and Unix backends: a reset stays a
//! reset in either direction, urgent data does not end a stream, a backend that closed
//! completely or a half-closed connection on which nothing moves frees its slot.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::proxy::proxy;
use crate::util::*;

/// Rounds per case: a reset turned into a clean end in 5 of 6 runs before the fix.
const ROUNDS: u64 = 6;

/// Closes with RST (SO_LINGER 0).
fn abort(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

/// Reads to the end: `Ok(bytes)` after a clean EOF, `Err(bytes)` after a reset.
fn read_to_end_or_reset(stream: &mut TcpStream) -> Result<usize, usize> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(total),
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Sends small writes until the way to the other end is full: each reaches ringsock as
/// a message of its own, so the direction carrying them stays in message mode, where
/// its SEND, parked on a full socket, is the first to be told when that socket is reset
/// (the report the other direction's RECV then misses).
fn trickle(stream: &mut TcpStream) {
    let chunk = [b't'; 1000];
    stream.set_nonblocking(true).unwrap();
    for _ in 0..5000 {
        match stream.write(&chunk) {
            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("trickle: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
}

/// Which peer resets, in [`a_reset_is_never_a_clean_end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resets {
    Backend,
    Client,
}

/// The other peer keeps its way toward the resetting one full with small writes
/// ([`trickle`]), so ringsock's SEND toward it is parked; the resetting peer sends a
/// lot and resets. The other peer has no writer of its own in flight then: its own write
/// would take the one reset report from its reader.
fn a_reset_is_never_a_clean_end(resets: Resets) {
    for driver in DRIVERS {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let (ringsock, addr) = proxy(driver, &[], &backend.local_addr().unwrap().to_string());
        for round in 0..ROUNDS {
            let client = connect_tcp(addr);
            let upstream = accept_within(&backend, Duration::from_secs(10));
            let (mut resetting, mut other) = match resets {
                Resets::Backend => (upstream, client),
                Resets::Client => (client, upstream),
            };
            trickle(&mut other);
            let reading = std::thread::spawn(move || read_to_end_or_reset(&mut other));
            resetting
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            resetting
                .write_all(&pattern(4 << 20, round + 1))
                .unwrap_or_else(|e| panic!("{driver:?} round {round}: {resets:?} write: {e}"));
            abort(resetting);
            let result = reading.join().unwrap();
            assert!(
                result.is_err(),
                "{driver:?} round {round}: after the {resets:?} reset, the other side read a \
                 clean EOF after {result:?} bytes\n{}",
                ringsock.stderr()
            );
        }
        ringsock.stop();
    }
}

#[test]
fn a_backend_that_resets_mid_answer_is_never_a_clean_end_for_the_client() {
    a_reset_is_never_a_clean_end(Resets::Backend);
}

#[test]
fn a_client_that_resets_mid_upload_is_never_a_clean_end_for_the_backend() {
    a_reset_is_never_a_clean_end(Resets::Client);
}

#[test]
fn urgent_data_does_not_end_the_stream() {
    const PART: usize = 100_000;
    for driver in DRIVERS {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let (ringsock, addr) = proxy(driver, &[], &backend.local_addr().unwrap().to_string());
        // Letters only: an urgent byte ('!') that a later one pushed back in band
        // (TCP keeps one urgent byte at a time) is told apart from the data.
        let data: Vec<u8> = pattern(4 * PART, 21)
            .iter()
            .map(|b| b'a' + b % 26)
            .collect();
        let mut client = connect_tcp(addr);
        let mut upstream = accept_within(&backend, Duration::from_secs(10));
        let receiving = std::thread::spawn(move || {
            let mut got = Vec::new();
            upstream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            upstream.read_to_end(&mut got).map(|_| got)
        });
        for part in data.chunks(PART).take(3) {
            client.write_all(part).unwrap();
            // SAFETY: one byte from a valid buffer on an open socket.
            let sent =
                unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
            assert_eq!(sent, 1);
        }
        client.write_all(&data[3 * PART..]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = receiving.join().unwrap().expect("backend read");
        got.retain(|&b| b != b'!');
        assert!(
            got == data,
            "{driver:?}: the backend got {} of the {} bytes sent in band",
            got.len(),
            data.len()
        );
        ringsock.stop();
    }
}

#[test]
fn a_unix_backend_that_closed_completely_frees_the_slot() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("closing.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Answers and closes, as an HTTP server closes an idle keep-alive connection.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let _ = conn.write_all(b"bye");
            }
        });
        let (ringsock, addr) = proxy(driver, &["-c", "2"], path.to_str().unwrap());
        // Two clients read the answer and its EOF but keep their end open.
        let held: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut client = connect_tcp(addr);
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).unwrap();
                assert_eq!(answer, b"bye", "{driver:?}");
                client
            })
            .collect();
        let start = Instant::now();
        let mut third = connect_tcp(addr);
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        third
            .read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("{driver:?}: the third client was never served: {e}"));
        assert_eq!(answer, b"bye", "{driver:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{driver:?}: the slots were freed only after {:?}",
            start.elapsed()
        );
        drop(held);
        ringsock.stop();
    }
}

#[test]
fn a_half_closed_connection_on_which_nothing_moves_is_cut_at_the_timeout() {
    for driver in DRIVERS {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let (ringsock, addr) = proxy(
            driver,
            &["--half-close-timeout", "2s"],
            &backend.local_addr().unwrap().to_string(),
        );
        let mut client = connect_tcp(addr);
        let mut upstream = accept_within(&backend, Duration::from_secs(10));
        // The backend says all it will say and keeps reading; the client says nothing.
        upstream.write_all(b"banner").unwrap();
        upstream.shutdown(Shutdown::Write).unwrap();
        let mut banner = [0u8; 6];
        client.read_exact(&mut banner).unwrap();
        let start = Instant::now();
        let result = read_to_end_or_reset(&mut client);
        let waited = start.elapsed();
        assert_eq!(result, Ok(0), "{driver:?}: the banner's EOF");
        // The client's own direction is idle: cut once the timeout passed.
        upstream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let cut = upstream.read_to_end(&mut rest);
        let cut_after = start.elapsed();
        assert!(
            matches!(&cut, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{driver:?}: the backend got {cut:?} after {cut_after:?}, expected a reset"
        );
        assert!(
            cut_after >= Duration::from_millis(1500) && cut_after < Duration::from_secs(6),
            "{driver:?}: cut after {cut_after:?} (EOF seen after {waited:?})"
        );
        ringsock.stop();
    }
}
