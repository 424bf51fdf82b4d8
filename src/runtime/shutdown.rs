//! Graceful shutdown signalling: one process-wide trigger, fanned out to a cheap
//! per-worker notifier that every connection task can wait on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::task::{Context, Poll, Waker};

/// Process-wide: set once by the supervisor, waited on by one task per worker.
#[derive(Default)]
pub struct Shutdown {
    triggered: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        waiters.into_iter().for_each(Waker::wake);
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    pub fn wait(self: &Arc<Self>) -> impl Future<Output = ()> + 'static {
        let this = self.clone();
        std::future::poll_fn(move |cx| {
            if this.is_triggered() {
                return Poll::Ready(());
            }
            lock(&this.waiters).push(cx.waker().clone());
            // Re-check after registering: trigger() may have run in between.
            if this.is_triggered() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Per-worker and single-threaded, so waiting costs no atomics or locks.
#[derive(Default)]
pub struct LocalShutdown {
    triggered: Cell<bool>,
    next_key: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl LocalShutdown {
    pub fn trigger(&self) {
        self.triggered.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_values().for_each(Waker::wake);
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.get()
    }

    /// Resolves once shutdown begins; dropping it unregisters, so connections that wait
    /// on it once per request do not pile up wakers.
    pub fn wait(self: &Rc<Self>) -> ShutdownWait {
        ShutdownWait {
            shutdown: self.clone(),
            key: None,
        }
    }
}

pub struct ShutdownWait {
    shutdown: Rc<LocalShutdown>,
    key: Option<u64>,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = self.shutdown.next_key.get();
                self.shutdown.next_key.set(key + 1);
                self.key = Some(key);
                key
            }
        };
        self.shutdown
            .waiters
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.shutdown.waiters.borrow_mut().remove(&key);
        }
    }
}
