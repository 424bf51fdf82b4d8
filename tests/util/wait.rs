//! The one way the tests wait for something: poll a condition until a deadline.

use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`within`] look.
const EVERY: Duration = Duration::from_millis(20);

/// Polls `done` every 20 ms until it returns `Some`, and returns that; after `timeout`,
/// panics with `what` (which can say what it sees then: a log, a count).
pub fn wait_until<T>(
    timeout: Duration,
    done: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    within(timeout, done).unwrap_or_else(|| panic!("{} (waited {timeout:?})", what()))
}

/// Polls `done` every 20 ms for up to `timeout`: `Some` as soon as it has a value, `None`
/// if it never had one. For a test that something does *not* happen, or that handles
/// the timeout itself.
pub fn within<T>(timeout: Duration, done: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(EVERY, timeout, done)
}

/// [`within`], looking every `every`: finer when the moment matters (an exit noticed
/// within a millisecond), coarser when a change must hold for a while, and zero when
/// `done` blocks by itself (a read with a timeout). The last time `done` is asked is once
/// `timeout` has passed, so a `None` covers the whole window.
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        let last = start.elapsed() >= timeout;
        if let Some(value) = done() {
            return Some(value);
        }
        if last {
            return None;
        }
        std::thread::sleep(every);
    }
}
