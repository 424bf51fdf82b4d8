//! Each worker's runtime: io_uring with the cheapest completion delivery the kernel
//! offers, else epoll; and the one log line that says which and why.

use std::io;
use std::sync::Arc;

use monoio::buf::{ProvidedBufConfig, ProvidedBufMode};
use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use super::blocking::{BlockingPool, PoolHandle};
use super::Driver;

/// io_uring submission queue size per worker. Each open connection has at most a couple
/// of polls in flight; monoio grows its completion handling past this, so it bounds
/// batching, not connections.
const RING_ENTRIES: u32 = 4096;

/// Most memory one worker's receive pool may hold: buffers exist only while a message is
/// in hand, so this bounds a burst, not the connections. Receives beyond it use buffers
/// of their own (see monoio's `ProvidedBufConfig`).
const RECV_POOL_BYTES: usize = 4 << 20;

pub type WorkerRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Builds this thread's runtime: io_uring with the cheapest completion delivery the
/// kernel offers, else io_uring as is, else epoll (monoio's own fallback).
///
/// By default the kernel runs a ring's completion work (task_work) by interrupting
/// the thread (an IPI) whenever it arrives. Each worker is the only thread touching its
/// ring, so `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+) lets it run that work in batches
/// when it next waits instead; `COOP_TASKRUN` (5.19+) at least avoids the interrupts.
/// See perf/results for what it is worth.
pub fn build_runtime(pool: &Arc<BlockingPool>) -> io::Result<WorkerRuntime> {
    let builder = || {
        RuntimeBuilder::<FusionDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .attach_thread_pool(Box::new(PoolHandle(pool.clone())))
    };
    let mut deferred = io_uring::IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun();
    let mut cooperative = io_uring::IoUring::builder();
    cooperative.setup_coop_taskrun();
    for flags in [deferred, cooperative] {
        match builder().uring_builder(flags).build() {
            Ok(runtime) => return Ok(runtime),
            Err(e) => crate::debug!("io_uring refused a setup flag ({e}); trying with fewer"),
        }
    }
    builder().build()
}

/// Sets up this worker's pool of `size`-byte receive buffers (`Stream::recv_provided`);
/// call inside the runtime, before the first receive.
pub fn configure_recv_pool(size: usize) -> io::Result<()> {
    let config = ProvidedBufConfig::new(size, (RECV_POOL_BYTES / size.max(1)).clamp(1, 1 << 15));
    match monoio::buf::configure_provided_bufs(config)? {
        ProvidedBufMode::Refused(errno) => crate::debug!(
            "io_uring refused a provided-buffer ring ({}); idle receives hold a buffer each",
            io::Error::from_raw_os_error(errno)
        ),
        ProvidedBufMode::Ring | ProvidedBufMode::Epoll => {}
    }
    Ok(())
}

pub fn log_driver(driver: Option<Driver>, threads: usize) {
    match driver {
        Some(Driver::IoUring) => {
            crate::info!(
                "using the io_uring driver on {threads} worker {}",
                plural(threads)
            )
        }
        _ => crate::warn!(
            "io_uring is unavailable ({}); using the epoll driver on {threads} worker {}",
            why_no_uring(),
            plural(threads)
        ),
    }
}

fn plural(threads: usize) -> &'static str {
    if threads == 1 {
        "thread"
    } else {
        "threads"
    }
}

/// Asks the kernel directly, so the log names the cause (disabled by sysctl, blocked by
/// seccomp, missing) rather than just "not available".
fn why_no_uring() -> String {
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() {
        return "MONOIO_FORCE_LEGACY_DRIVER is set".into();
    }
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a 120-byte io_uring_params struct.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd as libc::c_int) };
        return "the kernel lacks an io_uring operation ringsock needs".into();
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring".into(),
        Some(libc::EPERM) => {
            "io_uring_setup: permission denied; check sysctl kernel.io_uring_disabled \
                               and the unit's SystemCallFilter="
                .into()
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// Every connection that waits with a timeout holds a `Sleep` in its task for as
    /// long as it waits: vendor/monoio's patch 3 keeps it unpadded.
    #[test]
    fn a_timer_is_small() {
        assert!(std::mem::size_of::<monoio::time::Sleep>() <= 128);
        assert!(std::mem::align_of::<monoio::time::Sleep>() <= 8);
    }
}
