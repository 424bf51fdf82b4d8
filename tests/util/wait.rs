//! The one way the tests wait for something: poll a condition until a deadline.

use std::time::{Duration, Instant};

/// Polls `done` every 20 ms until it returns `Some`, and returns that; after `timeout`,
/// panics with `what` and whatever `context` says then (a log, a count).
pub fn wait_until<T>(
    timeout: Duration,
    mut done: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = done() {
            return value;
        }
        if start.elapsed() >= timeout {
            panic!("{} (waited {timeout:?})", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
