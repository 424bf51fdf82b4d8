//! The pipe budget under clients that never read: downloads stalled on their clients
//! must not take zero-copy away from the other connections, and lose no byte.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proxy::{metric_value, proxy_with_metrics, scrape};
use crate::util::*;

/// What each stalled download's backend sends: more than the kernel buffers between it
/// and a client that reads nothing (the client's receive buffer, ringsock's send buffer
/// of up to 4 MiB here, a pipe, the backend's own send buffer), so it stalls too.
const DOWNLOAD: usize = 8 << 20;

/// The upload that must still be spliced beside the stalled downloads.
const UPLOAD: usize = 64 << 20;

/// The process's pipe budget as ringsock computes it (half of fs.pipe-user-pages-soft),
/// in MiB; `None` when the kernel sets no limit, so there is no budget to exhaust.
fn pipe_budget_mib() -> Option<usize> {
    let pages = |name: &str| -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let limit = match (pages("pipe-user-pages-soft"), pages("pipe-user-pages-hard")) {
        (Some(soft), _) if soft > 0 => soft,
        (_, Some(hard)) if hard > 0 => hard,
        _ => return None,
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    Some((limit * page / 2) >> 20)
}

/// Most stalled downloads a test may start.
const MAX_STALLED: usize = 512;

/// Bytes each download's backend has written so far, by download.
type Written = Arc<Vec<AtomicUsize>>;

/// A Unix backend: a connection that starts with `d` and a 2-byte download number `i`
/// gets [`DOWNLOAD`] pattern bytes from offset `i * 1000` and EOF, counting them in
/// `written[i]`; one that starts with `u` is read to EOF and answered with the count of
/// bytes after the `u`, as 8 bytes little-endian.
fn backend(path: &std::path::Path, written: Written) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let written = written.clone();
            std::thread::spawn(move || serve(conn, &written));
        }
    });
}

fn serve(mut conn: UnixStream, written: &[AtomicUsize]) {
    let mut first = [0u8; 1];
    if conn.read_exact(&mut first).is_err() {
        return;
    }
    if &first == b"d" {
        let mut index = [0u8; 2];
        if conn.read_exact(&mut index).is_err() {
            return;
        }
        let i = u16::from_le_bytes(index) as usize;
        if write_pattern(&mut conn, DOWNLOAD, i * 1000, &written[i]).is_ok() {
            let _ = conn.shutdown(Shutdown::Write);
        }
    } else {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => return,
            }
        }
        let _ = conn.write_all(&total.to_le_bytes());
    }
}

/// Clients that never read stall their downloads, enough of them to take the whole pipe
/// budget if each kept its pipe while it waits; an upload on another connection must
/// still be spliced (the spliced byte count grows by most of it), and every stalled
/// download, once read, is complete and in order.
///
/// 1. N downloads start; their clients read nothing, until the backends stop writing.
/// 2. A 64 MiB upload goes through; the backend confirms its length.
/// 3. `ringsock_proxy_spliced_bytes_total` grew by at least half the upload.
/// 4. Each stalled client reads its download to the end: exact, in order.
#[test]
fn clients_that_never_read_leave_zero_copy_to_the_others() {
    let Some(budget) = pipe_budget_mib() else {
        eprintln!("skipped: fs.pipe-user-pages-soft and -hard are 0, so no pipe budget");
        return;
    };
    // Enough 1 MiB pipes to take the budget twice over.
    let stalled = (2 * budget).max(64);
    if stalled > MAX_STALLED {
        eprintln!("skipped: a pipe budget of {budget} MiB needs {stalled} stalled clients");
        return;
    }
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let written: Written = Arc::new((0..MAX_STALLED).map(|_| AtomicUsize::new(0)).collect());
        backend(&path, written.clone());
        let (ringsock, addr, metrics) = proxy_with_metrics(driver, &[], path.to_str().unwrap());

        let clients: Vec<TcpStream> = (0..stalled)
            .map(|i| {
                let mut client = connect_tcp(addr);
                let [low, high] = (i as u16).to_le_bytes();
                client.write_all(&[b'd', low, high]).unwrap();
                client
            })
            .collect();
        wait_for_stall(&written, driver);

        let spliced = || metric_value(&scrape(metrics), "ringsock_proxy_spliced_bytes_total");
        let before = spliced();
        let mut upload = connect_tcp(addr);
        upload.write_all(b"u").unwrap();
        let sent = AtomicUsize::new(0);
        write_pattern(&mut upload, UPLOAD, 5, &sent).expect("the upload");
        upload.shutdown(Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        upload.read_exact(&mut count).expect("the upload's reply");
        assert_eq!(u64::from_le_bytes(count), UPLOAD as u64, "{driver:?}");
        let grown = wait_until(
            LOG,
            || {
                let grown = spliced() - before;
                (grown >= UPLOAD as u64 / 2).then_some(grown)
            },
            || {
                format!(
                    "{driver:?}: of a {UPLOAD}-byte upload beside {stalled} stalled \
                     downloads, {} bytes were spliced",
                    spliced() - before
                )
            },
        );
        assert!(grown <= (UPLOAD as u64) * 2, "{driver:?}: {grown}");

        for (i, client) in clients.into_iter().enumerate() {
            read_pattern(client, DOWNLOAD, i * 1000)
                .unwrap_or_else(|e| panic!("{driver:?}: stalled download {i}: {e}"));
        }
        ringsock.stop();
    }
}

/// How long a log line or a stall may take: generous, a debug build on 2 busy cores.
const LOG: Duration = Duration::from_secs(20);

/// Waits until the downloads' backends have written something and then nothing more
/// for half a second: every way to the clients is full.
fn wait_for_stall(written: &[AtomicUsize], driver: Driver) {
    let mut last = (usize::MAX, Instant::now());
    wait_until(
        LOG,
        || {
            let now = written.iter().map(|w| w.load(Ordering::SeqCst)).sum();
            if now != last.0 {
                last = (now, Instant::now());
                return None;
            }
            (now > 0 && last.1.elapsed() >= Duration::from_millis(500)).then_some(())
        },
        || format!("{driver:?}: the downloads never stalled"),
    )
}
