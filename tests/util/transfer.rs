//! Data through a connection: deterministic patterns, echo transfers checked byte for
//! byte, round trips, and what a closed or silent connection looks like.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use super::*;

/// Sends `data`, half-closes, reads until EOF: the reply must come back intact.
pub fn send_half_close_read(mut stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = stream.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    stream.write_all(data).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    reading.join().unwrap().expect("read reply")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A pause in [`echo_transfer`]'s sending: after `at` bytes it says so on `reached` and
/// waits for `go` (dropping the sender counts as go).
pub struct Gate {
    pub at: usize,
    pub reached: mpsc::Sender<()>,
    pub go: mpsc::Receiver<()>,
}

/// Sends `len` bytes of the pattern (from offset `seed`, so connections differ), then
/// half-closes, while reading the echo concurrently and comparing every byte: Ok only
/// if exactly those bytes came back, followed by EOF.
pub fn echo_transfer<C: Conn>(
    conn: C,
    len: usize,
    seed: usize,
    gate: Option<Gate>,
) -> Result<(), String> {
    // Both ways bounded: a stalled proxy fails the transfer instead of hanging the test.
    conn.set_read_timeout_to(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout_to(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.clone_conn().map_err(|e| e.to_string())?;
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0;
        let mut gate = gate;
        while sent < len {
            let mut max = (len - sent).min(1 << 18);
            if let Some(g) = &gate {
                if sent == g.at {
                    let _ = g.reached.send(());
                    let _ = g.go.recv_timeout(Duration::from_secs(60));
                    gate = None;
                    continue;
                }
                if g.at > sent {
                    max = max.min(g.at - sent);
                }
            }
            let chunk = stream_at(seed + sent, max);
            writer.write_all(chunk)?;
            sent += chunk.len();
        }
        if let Some(g) = &gate {
            let _ = g.reached.send(());
        }
        writer.shutdown_write()
    });
    let received = read_pattern(conn, len, seed);
    let sent = sending.join().expect("sender panicked");
    match (received, sent) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(format!("sending failed: {e}")),
        (Err(r), Err(s)) => Err(format!("{r}; sending failed too: {s}")),
    }
}

/// Writes `len` pattern bytes from offset `seed` (what read_pattern checks), counting
/// them in `progress` as they go.
pub fn write_pattern<W: Write>(
    out: &mut W,
    len: usize,
    seed: usize,
    progress: &AtomicUsize,
) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < len {
        let chunk = stream_at(seed + sent, (len - sent).min(1 << 16));
        out.write_all(chunk)?;
        sent += chunk.len();
        progress.store(sent, Ordering::SeqCst);
    }
    Ok(())
}

/// The `len` pattern bytes from offset `seed` that write_pattern sends, for comparing
/// what arrives on a connection that stays open (read_pattern needs an EOF).
pub fn pattern_at(seed: usize, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        bytes.extend_from_slice(stream_at(seed + bytes.len(), len - bytes.len()));
    }
    bytes
}

/// Reads until EOF and checks it is exactly `len` pattern bytes from offset `seed`.
pub fn read_pattern<C: Conn>(mut conn: C, len: usize, seed: usize) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 18];
    let mut got = 0usize;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("read failed after {got} of {len} bytes: {e}")),
        };
        if got + n > len {
            return Err(format!(
                "received {} bytes, more than the {len} sent",
                got + n
            ));
        }
        let mut checked = 0;
        while checked < n {
            let want = stream_at(seed + got + checked, n - checked);
            if buf[checked..checked + want.len()] != *want {
                let at = (0..want.len())
                    .find(|&i| buf[checked + i] != want[i])
                    .unwrap();
                return Err(format!("byte {} of {len} differs", got + checked + at));
            }
            checked += want.len();
        }
        got += n;
    }
    if got == len {
        Ok(())
    } else {
        Err(format!("EOF after {got} of {len} bytes"))
    }
}

/// Writes `data` and reads back exactly as many bytes: one echo round trip.
pub fn round_trip<C: Conn>(conn: &mut C, data: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(data)?;
    let mut got = vec![0u8; data.len()];
    conn.read_exact(&mut got)?;
    Ok(got)
}

/// Asserts nothing arrives within `wait`: the only way to see that bytes were *not*
/// forwarded, so it is a timeout by nature.
pub fn assert_silent<C: Conn>(conn: &mut C, wait: Duration, what: &str) {
    conn.set_read_timeout_to(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what}: expected no data for {wait:?}, got {other:?}"),
    }
    conn.set_read_timeout_to(Some(Duration::from_secs(30)))
        .unwrap();
}

/// True when the peer closed or reset without sending a byte.
pub fn closed_without_data<C: Conn>(conn: &mut C) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!("expected EOF or reset, got {other:?}")),
    }
}

/// Length of the pattern block: a prime, so no splice or buffer size divides it and a
/// chunk lost, doubled or swapped shows up as a mismatch, not as equal bytes.
const BLOCK_LEN: usize = 1_048_573;

pub(super) fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| pattern(BLOCK_LEN, 0x5eed))
}

/// Up to `max` bytes of the endless repetition of the block, from stream offset `pos`.
pub(super) fn stream_at(pos: usize, max: usize) -> &'static [u8] {
    let off = pos % BLOCK_LEN;
    &block()[off..BLOCK_LEN.min(off + max)]
}
