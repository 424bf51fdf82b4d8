//! The one bounded pool of threads for calls that may block: opening and reading files
//! that are not cached, directory listings, host-name lookups. nginx's `aio threads`.
//!
//! Every worker runtime hands its `spawn_blocking` work here. Threads start when work
//! finds none idle, up to the bound, and end after a minute without work, so an idle
//! proxy or a fully cached mirror keeps none.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use monoio::blocking::BlockingTask;

/// How long a thread waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// Shared by every worker of the process.
pub struct BlockingPool {
    state: Mutex<State>,
    work: Condvar,
    max_threads: usize,
    /// Calls taken up so far.
    ran: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<BlockingTask>,
    threads: usize,
    idle: usize,
}

/// What the pool is doing now, for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    pub busy: usize,
    pub queued: usize,
    pub ran: u64,
}

impl BlockingPool {
    pub fn new(max_threads: usize) -> Arc<BlockingPool> {
        Arc::new(BlockingPool {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            max_threads: max_threads.max(1),
            ran: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.lock();
        PoolStats {
            threads: state.threads,
            busy: state.threads - state.idle,
            queued: state.queue.len(),
            ran: self.ran.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking task cannot leave the queue half-updated.
        crate::sync::lock(&self.state)
    }

    fn schedule(self: &Arc<Self>, task: BlockingTask) {
        let mut state = self.lock();
        state.queue.push_back(task);
        // Idle threads already woken but not yet running count against the queue, so a
        // burst of work starts as many threads as it needs.
        if state.queue.len() <= state.idle {
            self.work.notify_one();
            return;
        }
        if state.threads < self.max_threads {
            state.threads += 1;
            let pool = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ringsock-io".into())
                .stack_size(256 * 1024)
                .spawn(move || pool.run_thread());
            if let Err(e) = spawned {
                state.threads -= 1;
                crate::warn!(
                    "failed to start an I/O thread: {e}; the queued work waits for a running one"
                );
                if state.threads == 0 {
                    // No thread will ever take it: run it here rather than never.
                    let task = state.queue.pop_back();
                    drop(state);
                    if let Some(task) = task {
                        task.run();
                    }
                }
            }
        }
        // Else the work waits in the queue for the next thread that finishes.
    }

    fn run_thread(self: Arc<Self>) {
        crate::sys::yield_to_workers();
        let mut state = self.lock();
        loop {
            if let Some(task) = state.queue.pop_front() {
                drop(state);
                // Counted before it runs: its caller may look as soon as it returns.
                self.ran.fetch_add(1, Ordering::Relaxed);
                task.run();
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (guard, waited) = self
                .work
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(|e| e.into_inner());
            state = guard;
            state.idle -= 1;
            if waited.timed_out() && state.queue.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}

/// What a worker runtime is given: a handle on the shared pool.
pub struct PoolHandle(pub Arc<BlockingPool>);

impl monoio::blocking::ThreadPool for PoolHandle {
    fn schedule_task(&self, task: BlockingTask) {
        self.0.schedule(task);
    }
}

/// Runs `f` on the pool and waits for it without blocking the worker. An error when the
/// call could not run (the pool dropped it).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    monoio::spawn_blocking(f).await.map_err(|_| {
        io::Error::other("an I/O thread dropped the call (no thread could be started to run it)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocking work on several workers at once starts threads up to the bound and no
    /// more, and every call's result comes back to its caller.
    #[test]
    fn bounded_and_returns_results() {
        let pool = BlockingPool::new(3);
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(PoolHandle(pool.clone())))
            .build()
            .expect("runtime");
        let peak = Arc::new(AtomicU64::new(0));
        let sum: u64 = runtime.block_on(async {
            let mut handles = Vec::new();
            for i in 0..12u64 {
                let (pool, peak) = (pool.clone(), peak.clone());
                handles.push(monoio::spawn(run(move || {
                    peak.fetch_max(pool.stats().threads as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                    i
                })));
            }
            let mut sum = 0;
            for h in handles {
                sum += h.await.expect("ran");
            }
            sum
        });
        assert_eq!(sum, (0..12).sum::<u64>());
        assert_eq!(peak.load(Ordering::Relaxed), 3);
        assert_eq!(pool.stats().ran, 12);
        // A thread hands its result over before it is idle again: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while pool.stats().busy > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            pool.stats().busy,
            0,
            "a thread stayed busy with nothing to do"
        );
        assert_eq!(
            pool.stats().threads,
            3,
            "idle threads end only after a minute"
        );
    }
}
