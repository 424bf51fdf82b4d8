//! Locking that survives a panicking thread: a mutex poisoned by a panic still holds
//! usable data everywhere ringsock uses one (lists of wakers, counters, tables), and one
//! panicking connection must not take the process down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a thread panicked while holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
