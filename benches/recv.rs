//! Receiving with a buffer of one's own (`Stream::recv`, what pump and serve do today)
//! against one taken from the worker's pool when data arrives (`Stream::recv_provided`),
//! on both drivers.
//!
//! - First, idle memory: `IDLE` Unix sockets that each received one message and wait in
//!   their next receive, measured in a fresh process per case (RssAnon from
//!   /proc/self/status, so one case's heap does not carry into the next). The messages
//!   arrive either spread out (10 connections a millisecond: the idle steady state) or
//!   all at once (a burst: every buffer is in hand at the same moment, so the pool grows
//!   to its cap and keeps it). Printed, not timed; skipped when a filter names no `idle`.
//! - `recv/<driver>/<mode>`: one 64-byte round trip over a Unix socket pair with an echo
//!   task on the same runtime, i.e. two messages each received once. Timed as this
//!   thread's CPU time (user + system, CLOCK_THREAD_CPUTIME_ID), not wall time: the
//!   whole exchange runs on this thread, and other work on a shared machine then counts
//!   less.
//! - `paired` (only with that filter, instead of the criterion cases): the same round
//!   trip, owned and provided on two runtimes side by side, in alternating batches in
//!   random order, so that load from elsewhere on a shared machine falls on both alike;
//!   prints the medians and the spread of the per-pair difference. Finer than criterion's
//!   separate runs when the machine is busy.

use std::future::Future;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use monoio::buf::{ProvidedBufConfig, ProvidedBufMode};
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringsock::net::Stream;
use ringsock::systemd::activation::Family;

type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// The proxy's receive size and pool (2 KiB, 4 MiB a worker).
const SIZE: usize = 2048;
const POOL: ProvidedBufConfig = ProvidedBufConfig::new(SIZE, 2048);
const MESSAGE: usize = 64;
const IDLE: usize = 2000;
/// Child processes per idle-memory case.
const IDLE_RUNS: usize = 3;
/// Set in a child: `<driver>:<mode>:<arrival>`; it measures and prints one line.
const CHILD_ENV: &str = "RECV_BENCH_IDLE";

#[derive(Clone, Copy, Debug)]
enum Driver {
    Uring,
    Epoll,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Owned,
    Provided,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Arrival {
    Spread,
    Burst,
}

/// Connections that get their message in the same millisecond, when spread.
const SPREAD_PER_MS: usize = 10;

/// A worker's runtime: io_uring with the workers' setup flags, or epoll; its pool set up.
fn runtime(driver: Driver) -> Runtime {
    let mut runtime: Runtime = match driver {
        Driver::Uring => {
            let mut flags = io_uring::IoUring::builder();
            flags.setup_single_issuer().setup_defer_taskrun();
            RuntimeBuilder::<TimeDriver<IoUringDriver>>::new()
                .with_entries(4096)
                .uring_builder(flags)
                .build()
                .expect("io_uring runtime")
                .into()
        }
        Driver::Epoll => RuntimeBuilder::<TimeDriver<LegacyDriver>>::new()
            .build()
            .expect("epoll runtime")
            .into(),
    };
    let mode = runtime.block_on(async { monoio::buf::configure_provided_bufs(POOL) });
    let expected = match driver {
        Driver::Uring => ProvidedBufMode::Ring,
        Driver::Epoll => ProvidedBufMode::Epoll,
    };
    assert_eq!(mode.expect("configure"), expected);
    runtime
}

fn stream(fd: std::os::unix::net::UnixStream) -> Stream {
    fd.set_nonblocking(true).expect("nonblocking");
    Stream::from_fd(OwnedFd::from(fd), Family::Unix).expect("register")
}

/// Receives once, the way `mode` does; returns the bytes (for the echo to send back).
/// `owned` is the buffer an owned receive reuses, as pump.rs does.
async fn receive(
    s: &mut Stream,
    mode: Mode,
    owned: &mut Option<Vec<u8>>,
    poll_first: bool,
) -> Received {
    match mode {
        Mode::Owned => {
            let mut buf = owned.take().unwrap_or_else(|| Vec::with_capacity(SIZE));
            buf.clear();
            let (r, buf) = if poll_first {
                s.recv_poll_first(buf).await
            } else {
                s.recv(buf).await
            };
            r.expect("recv");
            Received::Owned(buf)
        }
        Mode::Provided => Received::Provided(s.recv_provided(poll_first).await.expect("recv")),
    }
}

enum Received {
    Owned(Vec<u8>),
    Provided(monoio::buf::ProvidedBuf),
}

impl Received {
    fn len(&self) -> usize {
        match self {
            Received::Owned(b) => b.len(),
            Received::Provided(b) => b.len(),
        }
    }

    /// Sends the bytes on as they are; gives back an owned buffer for reuse.
    async fn send(self, s: &mut Stream) -> Option<Vec<u8>> {
        match self {
            Received::Owned(b) => {
                let (r, b) = s.send_all(b).await;
                r.expect("send");
                Some(b)
            }
            Received::Provided(b) => {
                let (r, _) = s.send_all(b).await;
                r.expect("send");
                None
            }
        }
    }
}

/// A runtime with an echo task on one end of a socket pair; `round_trips` drives the
/// other end.
struct PingPong {
    runtime: Runtime,
    client: Stream,
    mode: Mode,
}

impl PingPong {
    fn new(driver: Driver, mode: Mode) -> PingPong {
        let mut runtime = runtime(driver);
        let client = runtime.block_on(async move {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            let (ours, mut echo) = (stream(ours), stream(theirs));
            monoio::spawn(async move {
                let mut owned = None;
                loop {
                    let got = receive(&mut echo, mode, &mut owned, true).await;
                    if got.len() == 0 {
                        return;
                    }
                    owned = got.send(&mut echo).await;
                }
            });
            ours
        });
        PingPong {
            runtime,
            client,
            mode,
        }
    }

    /// Runs `n` round trips; returns this thread's CPU time for them.
    fn round_trips(&mut self, n: u64) -> Duration {
        let (client, mode) = (&mut self.client, self.mode);
        self.runtime.block_on(cpu_time(async move {
            let mut owned = None;
            let mut request = vec![7u8; MESSAGE];
            for _ in 0..n {
                let (r, buf) = client.send_all(request).await;
                r.expect("send");
                request = buf;
                let mut got = 0;
                while got < MESSAGE {
                    let reply = receive(client, mode, &mut owned, true).await;
                    got += reply.len();
                    if let Received::Owned(b) = reply {
                        owned = Some(b);
                    }
                }
            }
        }))
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("recv");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for driver in [Driver::Uring, Driver::Epoll] {
        for mode in [Mode::Owned, Mode::Provided] {
            let mut pair = PingPong::new(driver, mode);
            let name = format!("{driver:?}/{mode:?}").to_lowercase();
            group.bench_function(name, |b| b.iter_custom(|iters| pair.round_trips(iters)));
        }
    }
    group.finish();
}

/// Batches of round trips, owned and provided alternating in random order.
fn paired() {
    const PAIRS: usize = 200;
    const BATCH: u64 = 2000;
    println!(
        "paired: {PAIRS} pairs of {BATCH}-round-trip batches, CPU ns a round trip (2 messages)"
    );
    // A fixed-seed xorshift for the order: reproducible, no dependency.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for driver in [Driver::Uring, Driver::Epoll] {
        let mut owned = PingPong::new(driver, Mode::Owned);
        let mut provided = PingPong::new(driver, Mode::Provided);
        owned.round_trips(BATCH);
        provided.round_trips(BATCH);
        let (mut a, mut b, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let (o, p) = if seed & 1 == 0 {
                let o = owned.round_trips(BATCH);
                (o, provided.round_trips(BATCH))
            } else {
                let p = provided.round_trips(BATCH);
                (owned.round_trips(BATCH), p)
            };
            let (o, p) = (
                o.as_nanos() as f64 / BATCH as f64,
                p.as_nanos() as f64 / BATCH as f64,
            );
            a.push(o);
            b.push(p);
            diff.push(p - o);
        }
        let q = |v: &mut Vec<f64>, f: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * f) as usize]
        };
        println!(
            "  {:<6} owned {:>6.0}  provided {:>6.0}  provided-owned: median {:>+5.0}, quartiles {:>+5.0}..{:<+5.0}",
            format!("{driver:?}").to_lowercase(),
            q(&mut a, 0.5),
            q(&mut b, 0.5),
            q(&mut diff, 0.5),
            q(&mut diff, 0.25),
            q(&mut diff, 0.75),
        );
    }
}

/// Runs `work` and returns the CPU time this thread spent on it.
async fn cpu_time(work: impl Future<Output = ()>) -> Duration {
    let start = thread_cpu();
    work.await;
    thread_cpu() - start
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec passed.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Anonymous resident memory of this process, in bytes.
fn rss_anon() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("RssAnon value");
    kib * 1024
}

/// In a child: `IDLE` sockets each receive one message, then wait in their next receive.
fn idle_child(driver: Driver, mode: Mode, arrival: Arrival) {
    ringsock::runtime::limit::raise_fd_limit();
    let mut runtime = runtime(driver);
    let before = rss_anon();
    let (peers, stats) = runtime.block_on(async move {
        let mut peers = Vec::with_capacity(IDLE);
        for i in 0..IDLE {
            let (ours, mut peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            let mut ours = stream(ours);
            peer.write_all(&[1u8; MESSAGE]).expect("peer write");
            peers.push(peer);
            monoio::spawn(async move {
                let mut owned = None;
                match receive(&mut ours, mode, &mut owned, false).await {
                    Received::Owned(b) => owned = Some(b),
                    // Handled and dropped, as a handler would.
                    Received::Provided(b) => drop(b),
                }
                // Parked here for good: the idle keep-alive connection.
                receive(&mut ours, mode, &mut owned, true).await;
            });
            if arrival == Arrival::Spread && i % SPREAD_PER_MS == SPREAD_PER_MS - 1 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        monoio::time::sleep(Duration::from_millis(200)).await;
        (peers, monoio::buf::provided_buf_stats())
    });
    let after = rss_anon();
    println!(
        "{} {}",
        after.saturating_sub(before),
        stats.map_or(0, |s| s.allocated)
    );
    drop((peers, runtime));
}

fn idle_memory() {
    println!("idle memory: {IDLE} Unix sockets, each after one {MESSAGE}-byte message, waiting in a receive ({SIZE}-byte buffers); RssAnon growth, {IDLE_RUNS} processes each");
    let exe = std::env::current_exe().expect("current_exe");
    for (driver, arrival) in [
        (Driver::Uring, Arrival::Spread),
        (Driver::Uring, Arrival::Burst),
        (Driver::Epoll, Arrival::Spread),
    ] {
        for mode in [Mode::Owned, Mode::Provided] {
            let mut per_socket = Vec::new();
            let mut pool = 0;
            for _ in 0..IDLE_RUNS {
                let out = Command::new(&exe)
                    .env(CHILD_ENV, format!("{driver:?}:{mode:?}:{arrival:?}"))
                    .output()
                    .expect("run child");
                assert!(out.status.success(), "child failed: {out:?}");
                let text = String::from_utf8_lossy(&out.stdout);
                let mut fields = text.split_whitespace().map(|f| f.parse::<usize>().ok());
                let (Some(Some(bytes)), Some(Some(allocated))) = (fields.next(), fields.next())
                else {
                    panic!("child said {text:?}");
                };
                per_socket.push(bytes / IDLE);
                pool = allocated;
            }
            per_socket.sort_unstable();
            println!(
                "  {:<6} {:<6} {:<9} {:>5}..{:<5} bytes a socket (pool buffers allocated: {pool})",
                format!("{driver:?}").to_lowercase(),
                format!("{arrival:?}").to_lowercase(),
                format!("{mode:?}").to_lowercase(),
                per_socket[0],
                per_socket[per_socket.len() - 1],
            );
        }
    }
}

fn main() {
    if let Ok(case) = std::env::var(CHILD_ENV) {
        let mut parts = case.split(':');
        let driver = match parts.next() {
            Some("Uring") => Driver::Uring,
            _ => Driver::Epoll,
        };
        let mode = match parts.next() {
            Some("Owned") => Mode::Owned,
            _ => Mode::Provided,
        };
        let arrival = match parts.next() {
            Some("Burst") => Arrival::Burst,
            _ => Arrival::Spread,
        };
        idle_child(driver, mode, arrival);
        return;
    }
    // `cargo bench` runs every bench binary with `--bench`; a filter naming only the
    // timed cases skips the memory table.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().map_or(true, |f| f.contains("idle")) {
        idle_memory();
    }
    if filter.as_deref().is_some_and(|f| f.contains("paired")) {
        paired();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    ping_pong(&mut c);
    c.final_summary();
}
