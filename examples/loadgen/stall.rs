//! Stalled downloads: opens CONNS connections that ask the backend for an endless
//! download (FLOOD) and never read, holds them until the downloads stop moving (every
//! buffer on the way is full), says so, and keeps them open for SECS more.

use std::io;
use std::time::{Duration, Instant};

use crate::addr::Conn;
use crate::sys;

pub fn stall(addr: &str, conns: usize, secs: u64) -> io::Result<()> {
    let mut open = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut conn = Conn::open(addr)?;
        conn.stream().write_all(b"FLOOD\0\0\0")?;
        open.push(conn);
    }
    let queued = wait_until_still(&open)?;
    println!(
        "stall conns={} queued_in_clients_mib={:.1}",
        open.len(),
        queued as f64 / (1 << 20) as f64
    );
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// Waits until the bytes queued in the clients' receive buffers have not changed for a
/// second (at most 60 s); returns them.
fn wait_until_still(open: &[Conn]) -> io::Result<usize> {
    let start = Instant::now();
    let (mut last, mut since) = (usize::MAX, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let queued = open
            .iter()
            .map(|c| sys::queued_in(c.fd()))
            .sum::<io::Result<usize>>()?;
        if queued != last {
            (last, since) = (queued, Instant::now());
        } else if queued > 0 && since.elapsed() >= Duration::from_secs(1) {
            return Ok(queued);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(io::Error::other("the downloads never stalled"));
        }
    }
}
