//! `Stream::recv_provided` in process, on both drivers: receive buffers taken from the
//! worker's pool only when data arrives (a monoio patch: vendor/monoio/PATCHES.md).

use std::future::Future;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use monoio::buf::{provided_buf_stats, ProvidedBufConfig, ProvidedBufMode, ProvidedBufStats};
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringsock::net::Stream;
use ringsock::systemd::activation::Family;

use crate::util::{Driver, DRIVERS};

type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// The runtime a worker builds on `driver`: on io_uring with the same setup flags.
fn runtime(driver: Driver) -> Runtime {
    match driver {
        Driver::IoUring => {
            let mut flags = io_uring::IoUring::builder();
            flags.setup_single_issuer().setup_defer_taskrun();
            RuntimeBuilder::<TimeDriver<IoUringDriver>>::new()
                .uring_builder(flags)
                .build()
                .expect("io_uring runtime")
                .into()
        }
        Driver::Epoll => RuntimeBuilder::<TimeDriver<LegacyDriver>>::new()
            .build()
            .expect("epoll runtime")
            .into(),
    }
}

fn run<F: Future>(
    driver: Driver,
    config: ProvidedBufConfig,
    test: impl FnOnce() -> F,
) -> F::Output {
    runtime(driver).block_on(async {
        let mode = monoio::buf::configure_provided_bufs(config).expect("configure");
        let expected = match driver {
            Driver::IoUring => ProvidedBufMode::Ring,
            Driver::Epoll => ProvidedBufMode::Epoll,
        };
        assert_eq!(mode, expected, "{driver:?}");
        test().await
    })
}

fn stats() -> ProvidedBufStats {
    provided_buf_stats().expect("the pool exists")
}

/// Every ring buffer is back in the ring (as the kernel counts them), none lost and
/// none held.
fn assert_all_back(driver: Driver) {
    let s = stats();
    assert_eq!(s.lent, 0, "{driver:?}: {s:?}");
    if let Driver::IoUring = driver {
        assert_eq!(s.in_ring, Some(s.allocated), "{driver:?}: {s:?}");
    }
}

/// A connected pair: ours (`Stream`, registered) and the peer's (blocking std socket).
fn unix_pair() -> (Stream, std::os::unix::net::UnixStream) {
    let (ours, peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    let ours = Stream::from_fd(OwnedFd::from(ours), Family::Unix).expect("register");
    (ours, peer)
}

fn tcp_pair() -> (Stream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (ours, _) = listener.accept().expect("accept");
    ours.set_nonblocking(true).expect("nonblocking");
    let ours = Stream::from_fd(OwnedFd::from(ours), Family::Tcp).expect("register");
    (ours, peer)
}

/// Byte `i` of the test stream: a pattern whose period (251) no message size divides.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Receives until EOF; returns the bytes and how many receives it took.
async fn receive_all(stream: &mut Stream) -> (Vec<u8>, usize) {
    let (mut got, mut receives, mut drained) = (Vec::new(), 0, false);
    loop {
        let buf = stream.recv_provided(drained).await.expect("recv_provided");
        receives += 1;
        if buf.is_empty() {
            return (got, receives);
        }
        got.extend_from_slice(&buf);
        drained = true;
    }
}

#[test]
fn messages_arrive_intact_and_in_order_then_eof() {
    const TOTAL: usize = 1 << 20;
    for driver in DRIVERS {
        for family in [Family::Unix, Family::Tcp] {
            run(driver, ProvidedBufConfig::new(2048, 64), || async {
                let (mut ours, peer): (Stream, Box<dyn Write + Send>) = match family {
                    Family::Unix => {
                        let (ours, peer) = unix_pair();
                        (ours, Box::new(peer))
                    }
                    Family::Tcp => {
                        let (ours, peer) = tcp_pair();
                        (ours, Box::new(peer))
                    }
                };
                // Messages of every size from 1 byte to 3 buffers, written from another
                // thread while we receive, then EOF (the peer closes).
                let writer = std::thread::spawn(move || {
                    let mut peer = peer;
                    let data = pattern(TOTAL);
                    let (mut at, mut size) = (0, 1);
                    while at < TOTAL {
                        let end = (at + size).min(TOTAL);
                        peer.write_all(&data[at..end]).expect("peer write");
                        at = end;
                        size = size % 6000 + 97;
                    }
                });
                let (got, receives) = receive_all(&mut ours).await;
                writer.join().expect("writer");
                assert_eq!(got.len(), TOTAL, "{driver:?} {family:?}");
                assert!(got == pattern(TOTAL), "{driver:?} {family:?}: bytes differ");
                assert!(receives > TOTAL / 2048, "{driver:?}: {receives} receives");
                assert_all_back(driver);
                assert_eq!(stats().fallbacks, 0, "{driver:?}");
            });
        }
    }
}

/// 35,000 one-byte round trips over 4 buffers: well over 65,536 buffers given back, so
/// the ring's u16 tail and its index into 4 entries both wrap many times.
#[test]
fn ring_positions_wrap() {
    const ROUND_TRIPS: usize = 35_000;
    for driver in DRIVERS {
        run(driver, ProvidedBufConfig::new(64, 4), || async {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            ours.set_nonblocking(true).expect("nonblocking");
            theirs.set_nonblocking(true).expect("nonblocking");
            let mut ours = Stream::from_fd(OwnedFd::from(ours), Family::Unix).expect("register");
            let mut echo = Stream::from_fd(OwnedFd::from(theirs), Family::Unix).expect("register");
            let echoing = monoio::spawn(async move {
                loop {
                    let buf = echo.recv_provided(true).await.expect("echo recv");
                    if buf.is_empty() {
                        return;
                    }
                    let (sent, _) = echo.send_all(buf).await;
                    sent.expect("echo send");
                }
            });
            for i in 0..ROUND_TRIPS {
                let (sent, _) = ours.send_all(vec![i as u8]).await;
                sent.expect("send");
                let reply = ours.recv_provided(true).await.expect("recv");
                assert_eq!(&reply[..], &[i as u8], "{driver:?}: round trip {i}");
            }
            ours.shutdown_write().expect("shutdown");
            echoing.await;
            assert_all_back(driver);
            let s = stats();
            assert!(s.allocated <= 4 && s.fallbacks == 0, "{driver:?}: {s:?}");
        });
    }
}

/// Receives parked on idle sockets hold no buffer: the pool stays at its first chunk with
/// every buffer in the ring, however many wait, with or without POLL_FIRST. And with the
/// ring empty (its only buffer held), an idle receive waits for data rather than
/// parking a buffer of its own.
#[test]
fn idle_receives_hold_no_buffer() {
    const IDLE: usize = 300;
    for driver in DRIVERS {
        run(driver, ProvidedBufConfig::new(2048, 1024), || async {
            let mut peers = Vec::new();
            let mut tasks = Vec::new();
            for i in 0..IDLE {
                let (mut ours, peer) = unix_pair();
                peers.push(peer);
                tasks.push(monoio::spawn(async move {
                    let buf = ours.recv_provided(i % 2 == 0).await.expect("recv");
                    buf.to_vec()
                }));
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            let s = stats();
            assert_eq!(s.lent, 0, "{driver:?}: {s:?}");
            // One chunk (64 KiB): the first receive's, none per connection.
            assert!(s.allocated <= 32, "{driver:?}: {s:?}");
            assert_all_back(driver);
            for (i, peer) in peers.iter_mut().enumerate() {
                peer.write_all(&[i as u8]).expect("peer write");
            }
            for (i, task) in tasks.into_iter().enumerate() {
                assert_eq!(task.await, [i as u8], "{driver:?}");
            }
            assert_all_back(driver);
        });
        run(driver, ProvidedBufConfig::new(256, 1), || async {
            let (mut first, mut first_peer) = unix_pair();
            first_peer.write_all(b"held").expect("peer write");
            let held = first.recv_provided(false).await.expect("recv");
            let mut peers = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let (mut ours, peer) = unix_pair();
                peers.push(peer);
                tasks.push(monoio::spawn(async move {
                    ours.recv_provided(false).await.expect("recv").to_vec()
                }));
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            // Every one got ENOBUFS at once (io_uring) and now waits for data, bufferless.
            assert_eq!(stats().fallbacks, 0, "{driver:?}: {:?}", stats());
            drop(held);
            for peer in &mut peers {
                peer.write_all(b"x").expect("peer write");
            }
            for task in tasks {
                assert_eq!(task.await, b"x", "{driver:?}");
            }
            assert_all_back(driver);
        });
    }
}

/// 4 buffers and 64 connections receiving at once, each holding what it received for a
/// while: the ring runs dry, receives fall back to buffers of their own, and every
/// connection still gets every byte in order.
#[test]
fn spent_pool_falls_back_without_losing_data() {
    const CONNECTIONS: usize = 64;
    const PER_CONNECTION: usize = 40 * 1000;
    for driver in DRIVERS {
        run(driver, ProvidedBufConfig::new(512, 4), || async {
            let mut tasks = Vec::new();
            let mut peers = Vec::new();
            for _ in 0..CONNECTIONS {
                let (mut ours, peer) = unix_pair();
                peers.push(peer);
                tasks.push(monoio::spawn(async move {
                    let (mut got, mut drained) = (Vec::new(), false);
                    loop {
                        let buf = ours.recv_provided(drained).await.expect("recv_provided");
                        if buf.is_empty() {
                            return got;
                        }
                        got.extend_from_slice(&buf);
                        // Hold the buffer across a wait, as a slow send would.
                        monoio::time::sleep(Duration::from_micros(200)).await;
                        drop(buf);
                        drained = true;
                    }
                }));
            }
            let writer = std::thread::spawn(move || {
                let data = pattern(PER_CONNECTION);
                for chunk in data.chunks(1000) {
                    for peer in &mut peers {
                        peer.write_all(chunk).expect("peer write");
                    }
                }
            });
            for task in tasks {
                let got = task.await;
                assert_eq!(got.len(), PER_CONNECTION, "{driver:?}");
                assert!(got == pattern(PER_CONNECTION), "{driver:?}: bytes differ");
            }
            writer.join().expect("writer");
            assert_all_back(driver);
            let s = stats();
            assert!(s.allocated <= 4, "{driver:?}: {s:?}");
            if let Driver::IoUring = driver {
                assert!(s.fallbacks > 0, "the ring never ran dry: {s:?}");
            }
            assert!(s.spares <= 4, "{driver:?}: {s:?}");
        });
    }
}

/// Polls `future` once, so its submission is queued; `true` if it is still pending.
async fn start<F: Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut future = Some(future);
    std::future::poll_fn(|cx| Poll::Ready(future.take().is_some_and(|f| f.poll(cx).is_pending())))
        .await
}

/// A receive dropped while in flight gives back the buffer its completion carries:
/// 1. dropped before its completion was reaped (monoio's `Ignored`, plus a cancel that
///    comes too late), and
/// 2. dropped after its completion was reaped but before anyone read it.
///
/// The pool has one buffer, so one lost buffer shows: the next receive would find the
/// ring empty and fall back to a buffer of its own. On epoll a receive takes a buffer
/// only when it reads, so a pending one holds none and its byte stays in the socket.
#[test]
fn receive_dropped_in_flight_gives_its_buffer_back() {
    for driver in DRIVERS {
        run(driver, ProvidedBufConfig::new(256, 1), || async {
            let (mut ours, mut peer) = unix_pair();
            let uring = matches!(driver, Driver::IoUring);
            peer.write_all(b"0").expect("peer write");
            let buf = ours.recv_provided(false).await.expect("recv");
            assert_eq!(
                (&buf[..], buf.from_ring()),
                (&b"0"[..], uring),
                "{driver:?}"
            );
            drop(buf);

            // 1. The RECV is only queued when dropped: it is submitted along with its
            //    cancel, finds the byte, and completes with a buffer nobody awaits.
            {
                let mut recv = pin!(ours.recv_provided(false));
                assert!(
                    start(recv.as_mut()).await,
                    "{driver:?}: the socket was empty"
                );
                peer.write_all(b"1").expect("peer write");
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert_all_back(driver);
            if uring {
                peer.write_all(b"a").expect("peer write");
                let buf = ours.recv_provided(false).await.expect("recv");
                // The dropped receive took byte 1.
                assert_eq!(&buf[..], b"a");
                assert!(buf.from_ring(), "the buffer was lost: {:?}", stats());
            }

            // 2. Completed while the runtime turned, never polled again.
            {
                let mut recv = pin!(ours.recv_provided(false));
                let pending = start(recv.as_mut()).await;
                // On epoll it found byte 1, still in the socket, and is done.
                assert_eq!(pending, uring, "{driver:?}");
                peer.write_all(b"2").expect("peer write");
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_all_back(driver);

            peer.write_all(b"3").expect("peer write");
            let buf = ours.recv_provided(false).await.expect("recv");
            let expected: &[u8] = match driver {
                Driver::IoUring => b"3",
                // The second took byte 1 and its result was dropped unread.
                Driver::Epoll => b"23",
            };
            assert_eq!(&buf[..], expected, "{driver:?}");
            assert_eq!(buf.from_ring(), uring, "the buffer was lost: {:?}", stats());
            assert_eq!(stats().fallbacks, 0, "{driver:?}");
        });
    }
}

/// A buffer held past its runtime's end stays readable, and dropping it then is safe.
#[test]
fn buffer_outlives_its_runtime() {
    for driver in DRIVERS {
        let mut runtime = runtime(driver);
        let (buf, held_by_task) = runtime.block_on(async {
            let (mut ours, mut peer) = unix_pair();
            peer.write_all(b"outlives").expect("peer write");
            let buf = ours.recv_provided(false).await.expect("recv");
            // A second buffer left inside a task that never finishes.
            peer.write_all(b"parked").expect("peer write");
            let held = Rc::new(std::cell::Cell::new(0));
            let seen = held.clone();
            monoio::spawn(async move {
                let buf = ours.recv_provided(false).await.expect("recv");
                seen.set(buf.len());
                std::future::pending::<()>().await;
                drop((buf, peer));
            });
            monoio::time::sleep(Duration::from_millis(10)).await;
            (buf, held)
        });
        drop(runtime);
        assert_eq!(&buf[..], b"outlives", "{driver:?}");
        assert_eq!(held_by_task.get(), 6, "{driver:?}");
        assert_eq!(buf.from_ring(), matches!(driver, Driver::IoUring));
        drop(buf);
    }
}

#[test]
fn pool_is_configured_once() {
    for driver in DRIVERS {
        run(driver, ProvidedBufConfig::new(1024, 16), || async {
            let same = monoio::buf::configure_provided_bufs(ProvidedBufConfig::new(1024, 16));
            assert!(same.is_ok(), "{driver:?}");
            let other = monoio::buf::configure_provided_bufs(ProvidedBufConfig::new(2048, 16));
            assert_eq!(
                other.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::AlreadyExists)
            );
            // Nothing is allocated before the first receive.
            assert_eq!(stats().allocated, 0, "{driver:?}");
        });
    }
    assert!(provided_buf_stats().is_none(), "outside a runtime");
}
