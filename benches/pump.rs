//! The forwarding hot path in process: bytes through `proxy::forward` between Unix
//! socket pairs on one io_uring worker, without perf/'s processes and loopback TCP.
//!
//! client ⇄ [proxy_in | forward() | proxy_out] ⇄ backend, all non-blocking socketpairs.
//! `connection_64B` sets up, uses and closes a whole connection per iteration, so it
//! includes what opening and closing the proxy's two sockets costs on the ring.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use monoio::io::{AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::UnixStream;
use ringsock::net::{Duplex, Stream};
use ringsock::proxy::metrics::WorkerCounters;
use ringsock::proxy::{forward, Lent, PipeBudget, PipePool, RECV_SIZE};
use ringsock::runtime::buffers::RecvBuffers;
use ringsock::runtime::park::Parking;
use ringsock::systemd::activation::Family;

/// A connected pair: one end for the test (monoio stream), one for the proxy (`Stream`).
fn pair() -> (UnixStream, Stream) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    theirs.set_nonblocking(true).expect("nonblocking");
    (
        UnixStream::from_std(ours).expect("register"),
        Stream::from_fd(OwnedFd::from(theirs), Family::Unix).expect("register"),
    )
}

/// The runtime every bench drives: io_uring when the kernel has it, as the workers use.
fn runtime() -> monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
}

fn pump(c: &mut Criterion) {
    let mut runtime = runtime();
    let (mut client, mut backend) = runtime.block_on(async {
        let (client, proxy_in) = pair();
        let (backend, proxy_out) = pair();
        monoio::spawn(async move {
            let pipes = PipePool::new(PipeBudget::from_system(), 16);
            let (parking, counters) = (Parking::default(), WorkerCounters::default());
            let buffers = RecvBuffers::new(RECV_SIZE);
            let lent = Lent {
                pipes: &pipes,
                parking: &parking,
                buffers: &buffers,
                counters: &counters,
            };
            let _ = forward(
                &Duplex::new(proxy_in),
                &Duplex::new(proxy_out),
                &lent,
                None,
                None,
            )
            .await;
        });
        (client, backend)
    });

    let mut group = c.benchmark_group("pump");
    group.measurement_time(Duration::from_secs(5));

    // Latency of one request/response through both directions (copy path).
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip_64B", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut request = vec![7u8; 64];
                let mut reply = vec![0u8; 64];
                let start = Instant::now();
                for _ in 0..iters {
                    let (r, buf) = client.write_all(request).await;
                    r.expect("client write");
                    request = buf;
                    let (r, buf) = backend.read_exact(reply).await;
                    r.expect("backend read");
                    let (r, buf) = backend.write_all(buf).await;
                    r.expect("backend write");
                    let (r, buf) = client.read_exact(buf).await;
                    r.expect("client read");
                    reply = buf;
                }
                start.elapsed()
            })
        })
    });

    // One direction, bulk: 1 MiB written by the client while the backend reads it (the
    // splice path once the first read fills the copy buffer).
    const MIB: usize = 1 << 20;
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("transfer_1MiB", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let writer = async {
                        let mut data = vec![1u8; MIB];
                        let (r, buf) = client.write_all(data).await;
                        r.expect("client write");
                        data = buf;
                        data
                    };
                    let reader = async {
                        let (r, buf) = backend.read_exact(vec![0u8; MIB]).await;
                        r.expect("backend read");
                        buf
                    };
                    let (_, got) = monoio::join!(writer, reader);
                    criterion::black_box(got);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// One whole connection per iteration: two fresh socket pairs, a 64-byte request and
/// reply through `forward`, half-closes both ways, and the close of every socket.
fn connection(c: &mut Criterion) {
    let mut runtime = runtime();
    let pipes = PipePool::new(PipeBudget::from_system(), 16);
    let mut group = c.benchmark_group("pump");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("connection_64B", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one_connection(&pipes).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

async fn one_connection(pipes: &PipePool) {
    let (mut client, proxy_in) = pair();
    let (mut backend, proxy_out) = pair();
    let proxied = async {
        let (client, upstream) = (Duplex::new(proxy_in), Duplex::new(proxy_out));
        let (parking, counters) = (Parking::default(), WorkerCounters::default());
        let buffers = RecvBuffers::new(RECV_SIZE);
        let lent = Lent {
            pipes,
            parking: &parking,
            buffers: &buffers,
            counters: &counters,
        };
        forward(&client, &upstream, &lent, None, None)
            .await
            .expect("forward");
    };
    let peers = async {
        let (r, request) = client.write_all(vec![7u8; 64]).await;
        r.expect("client write");
        client.shutdown().await.expect("client half-close");
        let (r, request) = backend.read_exact(request).await;
        r.expect("backend read");
        let (r, _) = backend.write_all(request).await;
        r.expect("backend write");
        backend.shutdown().await.expect("backend half-close");
        let (r, reply) = client.read_exact(vec![0u8; 64]).await;
        r.expect("client read");
        criterion::black_box(reply);
    };
    monoio::join!(proxied, peers);
}

criterion_group!(benches, pump, connection);
criterion_main!(benches);
