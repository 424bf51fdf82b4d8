//! `ringsock proxy` under faults, both drivers, TCP and Unix backends: a reset stays a
//! reset in either direction, urgent data does not end a stream, a backend that closed
//! completely or a half-closed connection on which nothing moves frees its slot.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// What cuts a proxied connection in [`a_unix_backend_with_bytes_unread_at_a_cut_reads_a_reset`].
#[derive(Clone, Copy, Debug)]
enum Cut {
    ClientReset,
    ShutdownTimeout,
}

/// Bytes `fd` sent that its AF_UNIX peer has not read yet (SIOCOUTQ).
fn unread_by_peer(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) }, 0);
    n as usize
}

/// Bytes waiting in `fd`'s receive queue (FIONREAD).
fn unread_here(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n as usize
}

/// Writes to `conn` (non-blocking, waiting for room in poll(2)) until `stop`, counting
/// in `written`; stops on the first error.
fn answer_until(
    conn: &std::os::unix::net::UnixStream,
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut conn = conn.try_clone().unwrap();
    conn.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let chunk = [b'a'; 1 << 16];
        while !stop.load(Ordering::SeqCst) {
            match conn.write(&chunk) {
                Ok(n) => {
                    written.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let mut fds = libc::pollfd {
                        fd: conn.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; 20 ms, so `stop` is looked at soon.
                    unsafe { libc::poll(&mut fds, 1, 20) };
                }
                Err(_) => return,
            }
        }
    })
}

/// AF_UNIX has no RST, but the kernel reports ECONNRESET to a peer when the socket
/// that closes still holds bytes from it unread (`unix_release_sock`). So a Unix-socket
/// backend whose answer is held up (the client reads none of it) learns of a cut: it
/// reads the whole upload forwarded before it, then ECONNRESET, not EOF, whether the
/// client reset or --shutdown-timeout ran out. With nothing of its own in flight it
/// sees EOF: perf/results/unix-cut-2026-12-08.md says what it can learn then.
fn a_unix_backend_with_bytes_unread_at_a_cut_reads_a_reset(cut: Cut) {
    const UPLOAD: usize = 64 * 1024;
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let args = ["--shutdown-timeout", "1s"];
        let (mut ringsock, addr) = proxy(driver, &args, path.to_str().unwrap());
        let mut client = connect_tcp(addr);
        let mut backend = wait_until(
            Duration::from_secs(10),
            || listener.accept().ok().map(|(conn, _)| conn),
            || format!("{driver:?}: ringsock never connected to the backend"),
        );
        backend.set_nonblocking(false).unwrap();
        let fd = backend.as_raw_fd();
        // The backend answers without end; the client reads none of it.
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = answer_until(&backend, written.clone(), stop.clone());
        client.write_all(&pattern(UPLOAD, 5)).unwrap();
        // Held up: the answer stopped moving (ringsock stopped reading it) with bytes
        // of it unread; and the whole upload waits in the backend's queue.
        let (mut last, mut still) = (usize::MAX, 0);
        wait_until(
            Duration::from_secs(10),
            || {
                let now = written.load(Ordering::SeqCst);
                still = if now == last { still + 1 } else { 0 };
                last = now;
                (still >= 10 && unread_by_peer(fd) > 0 && unread_here(fd) == UPLOAD).then_some(())
            },
            || format!("{driver:?}: the answer never stalled with the upload in"),
        );
        // The backend is in no call on the socket at the cut: a send(2) blocked in the
        // kernel would take the one report of it (sock_error() clears it) as a short
        // count, and the read after it would see EOF.
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        match cut {
            Cut::ClientReset => abort(client),
            Cut::ShutdownTimeout => ringsock.signal(libc::SIGTERM),
        }
        // Once ringsock closed, or drained its socket, none of the answer is queued.
        wait_until(
            Duration::from_secs(10),
            || (unread_by_peer(fd) == 0).then_some(()),
            || format!("{driver:?}: the answer stayed queued to ringsock"),
        );
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        let end = loop {
            match backend.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e.kind()),
            }
        };
        assert_eq!(
            got, UPLOAD,
            "{driver:?} {cut:?}: upload bytes before the end"
        );
        assert_eq!(
            end,
            Err(ErrorKind::ConnectionReset),
            "{driver:?} {cut:?}: the backend read a clean end of a cut upload\n{}",
            ringsock.stderr()
        );
        match cut {
            Cut::ClientReset => drop(ringsock.stop()),
            Cut::ShutdownTimeout => ringsock.wait_clean_exit(Duration::from_secs(10), driver),
        }
    }
}

#[test]
fn a_unix_backend_with_bytes_unread_when_the_client_resets_reads_a_reset() {
    a_unix_backend_with_bytes_unread_at_a_cut_reads_a_reset(Cut::ClientReset);
}

#[test]
fn a_unix_backend_with_bytes_unread_at_the_shutdown_timeout_reads_a_reset() {
    a_unix_backend_with_bytes_unread_at_a_cut_reads_a_reset(Cut::ShutdownTimeout);
}

/// With nothing of its own in flight, a Unix-socket backend reads a cut upload as EOF
/// (AF_UNIX has no other way to say it), but can still tell it from a clean end: a
/// client's half-close reaches it with its socket left open for the answer, a cut with
/// its socket closed completely (POLLHUP at once).
#[test]
fn a_unix_backend_tells_a_cut_upload_from_a_half_close_by_its_socket() {
    const UPLOAD: usize = 64 * 1024;
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (ringsock, addr) = proxy(driver, &[], path.to_str().unwrap());
        for clean in [true, false] {
            let mut client = connect_tcp(addr);
            let mut backend = wait_until(
                Duration::from_secs(10),
                || listener.accept().ok().map(|(conn, _)| conn),
                || format!("{driver:?}: ringsock never connected to the backend"),
            );
            backend.set_nonblocking(false).unwrap();
            backend
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            client.write_all(&pattern(UPLOAD, 6)).unwrap();
            let held = if clean {
                client.shutdown(Shutdown::Write).unwrap();
                Some(client)
            } else {
                wait_until(
                    Duration::from_secs(10),
                    || (unread_here(backend.as_raw_fd()) == UPLOAD).then_some(()),
                    || format!("{driver:?}: the upload never reached the backend"),
                );
                abort(client);
                None
            };
            let mut got = Vec::new();
            backend
                .read_to_end(&mut got)
                .unwrap_or_else(|e| panic!("{driver:?} clean={clean}: {e}"));
            assert_eq!(got.len(), UPLOAD, "{driver:?} clean={clean}");
            let mut fds = libc::pollfd {
                fd: backend.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            assert_eq!(unsafe { libc::poll(&mut fds, 1, 0) }, 1);
            assert_eq!(
                fds.revents & libc::POLLHUP != 0,
                !clean,
                "{driver:?}: after a {} the backend's socket showed {:#x}",
                if clean { "half-close" } else { "cut" },
                fds.revents
            );
            if let Some(mut client) = held {
                backend.write_all(b"ok").unwrap();
                backend.shutdown(Shutdown::Write).unwrap();
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).unwrap();
                assert_eq!(answer, b"ok", "{driver:?}");
            }
        }
        ringsock.stop();
    }
}
