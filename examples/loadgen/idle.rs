//! Idle connections: opens CONNS, holds them, and prints what they cost the forwarder
//! (RSS and threads of its whole process tree).

use std::io;
use std::time::Duration;

use crate::addr::Conn;

pub fn idle(addr: &str, conns: usize, pid: u64) -> io::Result<()> {
    let mut open = Vec::with_capacity(conns);
    let mut failures = 0;
    for _ in 0..conns {
        match open_checked(addr) {
            Ok(conn) => open.push(conn),
            Err(_) => failures += 1,
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // Forwarders that fork (socat, nginx workers) spread over processes: add them up.
    let tree = process_tree(pid);
    let rss_kib: u64 = tree.iter().map(|p| status_field(*p, "VmRSS:")).sum();
    let threads: u64 = tree.iter().map(|p| status_field(*p, "Threads:")).sum();
    println!(
        "idle conns={} rss_mib={:.1} threads={threads} processes={} failures={failures}",
        open.len(),
        rss_kib as f64 / 1024.0,
        tree.len()
    );
    Ok(())
}

/// A connection proven by a round trip to reach the backend, not just the forwarder.
fn open_checked(addr: &str) -> io::Result<Conn> {
    let mut conn = Conn::open(addr)?;
    conn.stream().write_all(b"12345678")?;
    let mut reply = [0u8; 8];
    conn.stream().read_exact(&mut reply)?;
    Ok(conn)
}

/// The number after `name` in /proc/PID/status (0 if the process is gone).
fn status_field(pid: u64, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `pid` and all its descendants.
fn process_tree(pid: u64) -> Vec<u64> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(children) =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        {
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u64>().ok()),
            );
        }
        i += 1;
    }
    all
}
