//! 64-byte ping-pong: every connection keeps one request in flight, all of them driven
//! by one epoll loop; prints the request rate and latency percentiles.

use std::io;
use std::time::{Duration, Instant};

use crate::addr::Conn;
use crate::sys;

const SIZE: usize = 64;
const REQUEST: [u8; SIZE] = [b'x'; SIZE];

/// The connections, each with its request's send time and how much of the echo is in.
struct PingPong {
    streams: Vec<Conn>,
    sent_at: Vec<Instant>,
    got: Vec<usize>,
    latencies_us: Vec<u32>,
}

/// Runs `sessions` consecutive sessions of `secs / sessions` each, every one on fresh
/// connections, and reports their latencies pooled. With few connections the result
/// depends on where the scheduler happens to put client, forwarder and backend threads
/// for the life of a connection (on 2 vCPUs one arrangement answers in half the time of
/// another), so a single long session is a coin flip; many short ones sample both.
pub fn pingpong(addr: &str, conns: usize, secs: u64, sessions: u64) -> io::Result<()> {
    let sessions = sessions.max(1);
    let per_session = Duration::from_secs(secs) / sessions as u32;
    let mut latencies_us = Vec::with_capacity(1 << 20);
    let mut session_p50s = Vec::new();
    let start = Instant::now();
    for _ in 0..sessions {
        let before = latencies_us.len();
        latencies_us = session(addr, conns, per_session, latencies_us)?;
        let mut this: Vec<u32> = latencies_us[before..].to_vec();
        this.sort_unstable();
        session_p50s.push(percentile(&this, 0.5));
    }
    report(
        conns,
        start.elapsed().as_secs_f64(),
        latencies_us,
        &session_p50s,
    );
    Ok(())
}

/// One session: `conns` new connections for `length`; appends to `latencies_us`.
fn session(
    addr: &str,
    conns: usize,
    length: Duration,
    latencies_us: Vec<u32>,
) -> io::Result<Vec<u32>> {
    let streams: Vec<Conn> = (0..conns)
        .map(|_| Conn::open(addr))
        .collect::<io::Result<_>>()?;
    let ep = sys::epoll_create()?;
    let mut pp = PingPong {
        streams,
        sent_at: vec![Instant::now(); conns],
        got: vec![0usize; conns],
        latencies_us,
    };
    for (i, s) in pp.streams.iter_mut().enumerate() {
        sys::epoll_ctl(
            &ep,
            libc::EPOLL_CTL_ADD,
            s.fd(),
            libc::EPOLLIN as u32,
            i as u64,
        )?;
        sys::set_nonblocking(s.fd())?;
        s.stream().write_all(&REQUEST)?;
        pp.sent_at[i] = Instant::now();
    }
    // At least one entry: epoll_wait refuses an empty array.
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.max(1)];
    let mut buf = [0u8; SIZE];
    let end = Instant::now() + length;
    while Instant::now() < end {
        for ev in sys::epoll_wait(&ep, &mut events, 1000)? {
            pp.on_readable(ev.u64 as usize, &mut buf)?;
        }
    }
    Ok(pp.latencies_us)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0)
}

/// Prints the pooled rate and percentiles, and the spread of the sessions' medians.
fn report(conns: usize, elapsed: f64, mut latencies_us: Vec<u32>, session_p50s: &[u32]) {
    latencies_us.sort_unstable();
    let (low, high) = (
        session_p50s.iter().min().copied().unwrap_or(0),
        session_p50s.iter().max().copied().unwrap_or(0),
    );
    println!(
        "pingpong conns={conns} req_per_s={:.0} p50_us={} p99_us={} sessions={} \
         session_p50_us={low}-{high} failures=0",
        latencies_us.len() as f64 / elapsed,
        percentile(&latencies_us, 0.5),
        percentile(&latencies_us, 0.99),
        session_p50s.len(),
    );
}

impl PingPong {
    /// Reads what of connection `i`'s echo has arrived; once all of it is in, records
    /// the latency and sends the next request.
    fn on_readable(&mut self, i: usize, buf: &mut [u8; SIZE]) -> io::Result<()> {
        let s = self.streams[i].stream();
        match s.read(&mut buf[..SIZE - self.got[i]]) {
            Ok(0) => return Err(io::Error::other("connection closed during ping-pong")),
            Ok(n) => self.got[i] += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.got[i] == SIZE {
            self.got[i] = 0;
            let us = self.sent_at[i].elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.latencies_us.push(us);
            s.write_all(&REQUEST)?;
            self.sent_at[i] = Instant::now();
        }
        Ok(())
    }
}
