//! Bulk: each connection sends MIB mebibytes after a "SINK" header, half-closes and
//! checks the backend's checksum reply, so lost, duplicated or reordered data and a
//! forwarder that does not keep half-closed connections all count as failures.

use std::io;
use std::time::Instant;

use crate::addr::Conn;
use crate::sum::{check_chunk_sum, ChunkSum, Sum};

/// One blocking thread per connection: cheap, since each of them moves gigabytes.
pub fn bulk(addr: &str, conns: usize, mib: u64) -> io::Result<()> {
    check_chunk_sum();
    let start = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.to_string();
            std::thread::spawn(move || bulk_conn(&addr, i, mib))
        })
        .collect();
    let mut failures = 0;
    for w in workers {
        match w.join() {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => failures += 1,
            Ok(Err(e)) => {
                eprintln!("bulk connection failed: {e}");
                failures += 1
            }
            Err(_) => failures += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let gbit = (conns as u64 * mib * 8) as f64 / 1024.0 / secs;
    println!("bulk conns={conns} mib={mib} gbit_per_s={gbit:.2} failures={failures}");
    Ok(())
}

/// Connection `i`: sends, half-closes, and says whether the reply was the right sum.
fn bulk_conn(addr: &str, i: usize, mib: u64) -> io::Result<bool> {
    let mut conn = Conn::open(addr)?;
    let mut chunk = random_chunk(i);
    // Each round's MiB differs only in its first word, so its effect on the sum is
    // known from the sum of the chunk with that word zero: the client spends its CPU on
    // sending, not on summing every byte twice.
    chunk[..8].fill(0);
    let base = ChunkSum::of(&chunk);
    let mut expect = Sum::default();
    conn.stream().write_all(b"SINK\0\0\0\0")?;
    for round in 0..mib {
        // Vary each MiB so a duplicated or skipped chunk changes the sum.
        chunk[..8].copy_from_slice(&round.to_le_bytes());
        base.with_first_word(round).append_to(&mut expect);
        conn.stream().write_all(&chunk)?;
    }
    conn.shutdown_write()?;
    let mut reply = Vec::new();
    conn.stream().read_to_end(&mut reply)?;
    Ok(reply == expect.bytes())
}

/// 1 MiB of xorshift bytes, different for each connection.
fn random_chunk(i: usize) -> Vec<u8> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    chunk
}
