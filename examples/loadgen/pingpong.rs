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

pub fn pingpong(addr: &str, conns: usize, secs: u64) -> io::Result<()> {
    let streams: Vec<Conn> = (0..conns)
        .map(|_| Conn::open(addr))
        .collect::<io::Result<_>>()?;
    let ep = sys::epoll_create()?;
    let mut pp = PingPong {
        streams,
        sent_at: vec![Instant::now(); conns],
        got: vec![0usize; conns],
        latencies_us: Vec::with_capacity(1 << 20),
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
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        for ev in sys::epoll_wait(&ep, &mut events, 1000)? {
            pp.on_readable(ev.u64 as usize, &mut buf)?;
        }
    }
    pp.report(conns, start.elapsed().as_secs_f64());
    Ok(())
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

    fn report(mut self, conns: usize, elapsed: f64) {
        let latencies_us = &mut self.latencies_us;
        latencies_us.sort_unstable();
        let pct = |p: f64| {
            latencies_us
                .get(((latencies_us.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "pingpong conns={conns} req_per_s={:.0} p50_us={} p99_us={} failures=0",
            latencies_us.len() as f64 / elapsed,
            pct(0.5),
            pct(0.99)
        );
    }
}
