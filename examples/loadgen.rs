//! Load generator and backends for perf/proxy.sh: ping-pong, bulk with a checksummed
//! half-close reply, connect churn and idle connections, plus the echo/sink backend.
//!
//! The client is an epoll loop (ping-pong) or a few blocking threads (bulk, churn), and
//! the backend serves each connection on its own thread, so neither is the bottleneck
//! for a forwarder on a 2-core machine. std + libc only.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen backend UNIX_PATH            echo backend; a connection starting with 'SINK' gets a checksum reply\n  \
         loadgen pingpong ADDR CONNS SECS     64-byte request/response; ADDR is host:port or /unix/path\n  \
         loadgen bulk ADDR CONNS MIB          each conn sends MIB, half-closes, verifies the checksum reply\n  \
         loadgen churn ADDR THREADS SECS      connect, send 64 B, half-close, read echo, close\n  \
         loadgen idle ADDR CONNS PID          hold CONNS open connections, print PID's RSS and threads"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    let result = match arg(0).as_str() {
        "backend" => backend(&arg(1)),
        "pingpong" => pingpong(&arg(1), num(2) as usize, num(3)),
        "bulk" => bulk(&arg(1), num(2) as usize, num(3)),
        "churn" => churn(&arg(1), num(2) as usize, num(3)),
        "idle" => idle(&arg(1), num(2) as usize, num(3)),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// A connection to ADDR, TCP with TCP_NODELAY or Unix.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        if addr.starts_with('/') {
            return Ok(Conn::Unix(UnixStream::connect(addr)?));
        }
        let addr: SocketAddr = addr.parse().map_err(|_| io::Error::other("bad address"))?;
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn::Tcp(stream))
    }
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
    fn fd(&self) -> i32 {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Position-sensitive checksum over the byte stream (Adler-style over 64-bit words), so
/// lost, duplicated or reordered data all change it. Streams are multiples of 8 bytes.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Sum {
    a: u64,
    b: u64,
}

impl Sum {
    fn update(&mut self, data: &[u8]) {
        for word in data.chunks_exact(8) {
            self.a = self
                .a
                .wrapping_add(u64::from_le_bytes(word.try_into().unwrap()));
            self.b = self.b.wrapping_add(self.a);
        }
    }
    fn bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }
}

fn backend(path: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // SAFETY: raising the backlog of our own listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    for conn in listener.incoming() {
        let conn = conn?;
        std::thread::spawn(move || {
            let _ = serve_backend(conn);
        });
    }
    Ok(())
}

fn serve_backend(mut conn: UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let n = conn.read(&mut buf)?;
    if n >= 8 && &buf[..4] == b"SINK" {
        // Bulk: checksum everything after the 8-byte header until EOF, then reply.
        // Whole words are summed in place; only a partial word (< 8 bytes) moves to the
        // front, so the backend costs one pass over the data.
        let mut sum = Sum::default();
        let (mut start, mut end) = (8, n);
        loop {
            let whole = (end - start) / 8 * 8;
            sum.update(&buf[start..start + whole]);
            buf.copy_within(start + whole..end, 0);
            end -= start + whole;
            start = 0;
            let n = conn.read(&mut buf[end..])?;
            if n == 0 {
                break;
            }
            end += n;
        }
        conn.write_all(&sum.bytes())?;
        return conn.shutdown(Shutdown::Write);
    }
    // Echo.
    let mut n = n;
    while n > 0 {
        conn.write_all(&buf[..n])?;
        n = conn.read(&mut buf)?;
    }
    conn.shutdown(Shutdown::Write)
}

fn pingpong(addr: &str, conns: usize, secs: u64) -> io::Result<()> {
    const SIZE: usize = 64;
    let mut streams: Vec<Conn> = (0..conns)
        .map(|_| Conn::open(addr))
        .collect::<io::Result<_>>()?;
    // SAFETY: epoll calls on fds we own.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let request = [b'x'; SIZE];
    let mut sent_at = vec![Instant::now(); conns];
    let mut got = vec![0usize; conns];
    for (i, s) in streams.iter_mut().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.fd(), &mut ev) };
        set_nonblocking(s.fd());
        s.stream().write_all(&request)?;
        sent_at[i] = Instant::now();
    }
    let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns];
    let mut buf = [0u8; SIZE];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), conns as i32, 1000) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            let s = streams[i].stream();
            match s.read(&mut buf[..SIZE - got[i]]) {
                Ok(0) => return Err(io::Error::other("connection closed during ping-pong")),
                Ok(n) => got[i] += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            if got[i] == SIZE {
                got[i] = 0;
                latencies_us.push(sent_at[i].elapsed().as_micros().min(u32::MAX as u128) as u32);
                s.write_all(&request)?;
                sent_at[i] = Instant::now();
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
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
    Ok(())
}

fn set_nonblocking(fd: i32) {
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn bulk(addr: &str, conns: usize, mib: u64) -> io::Result<()> {
    let start = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.to_string();
            std::thread::spawn(move || -> io::Result<bool> {
                let mut conn = Conn::open(&addr)?;
                let mut chunk = vec![0u8; 1 << 20];
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let mut expect = Sum::default();
                conn.stream().write_all(b"SINK\0\0\0\0")?;
                for round in 0..mib {
                    // Vary each MiB so a duplicated or skipped chunk changes the sum.
                    chunk[..8].copy_from_slice(&round.to_le_bytes());
                    expect.update(&chunk);
                    conn.stream().write_all(&chunk)?;
                }
                conn.shutdown_write()?;
                let mut reply = Vec::new();
                conn.stream().read_to_end(&mut reply)?;
                Ok(reply == expect.bytes())
            })
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

fn churn(addr: &str, threads: usize, secs: u64) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, stop, done, failed) =
                (addr.to_string(), stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let request = [b'c'; 64];
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> io::Result<bool> {
                        let mut conn = Conn::open(&addr)?;
                        conn.stream().write_all(&request)?;
                        conn.shutdown_write()?;
                        let mut reply = Vec::with_capacity(64);
                        conn.stream().read_to_end(&mut reply)?;
                        Ok(reply == request)
                    })();
                    match ok {
                        Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "churn threads={threads} conn_per_s={:.0} failures={}",
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn idle(addr: &str, conns: usize, pid: u64) -> io::Result<()> {
    let mut open = Vec::with_capacity(conns);
    let mut failures = 0;
    for _ in 0..conns {
        // A round trip proves the connection reaches the backend, not just the forwarder.
        let ok = (|| -> io::Result<Conn> {
            let mut conn = Conn::open(addr)?;
            conn.stream().write_all(b"12345678")?;
            let mut reply = [0u8; 8];
            conn.stream().read_exact(&mut reply)?;
            Ok(conn)
        })();
        match ok {
            Ok(conn) => open.push(conn),
            Err(_) => failures += 1,
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // Forwarders that fork (socat, nginx workers) spread over processes: add them up.
    let tree = process_tree(pid);
    let field = |pid: &u64, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let rss_kib: u64 = tree.iter().map(|p| field(p, "VmRSS:")).sum();
    let threads: u64 = tree.iter().map(|p| field(p, "Threads:")).sum();
    println!(
        "idle conns={} rss_mib={:.1} threads={threads} processes={} failures={failures}",
        open.len(),
        rss_kib as f64 / 1024.0,
        tree.len()
    );
    Ok(())
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
