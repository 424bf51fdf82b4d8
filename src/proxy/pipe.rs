//! Kernel pipes for splice(2), pooled per worker, sized within the user's pipe budget.
//!
//! A pipe is only held while bytes are in flight in one direction; an idle connection
//! returns its pipes, so 10,000 idle connections cost sockets, not 20,000 extra pipes.
//!
//! Bigger pipes move more per splice: 1 MiB pipes cost markedly less CPU per GiB than
//! 256 KiB ones (perf/results/proxy-2026-11-25.md). But the kernel charges every pipe's capacity to its user
//! and, past `fs.pipe-user-pages-soft` (64 MiB by default), gives an unprivileged user's
//! new pipes 8 KiB: every pipe of that user, in any process, slows to a crawl. So the
//! workers share a budget of half that limit and size each new pipe to what is left:
//! 1 MiB while it lasts, then 256 KiB, then the kernel's default 64 KiB, then none: a
//! connection that gets no pipe copies through its receive buffer instead. Pipes left
//! unused for a while are closed, so an idle proxy holds none.
//!
//! A pipe waiting for a full destination with bytes in it is held for as long as that
//! destination takes: forever, for a client that never reads. Only half the budget may be
//! held that way (`Pipe::wait_share`); past it, the pump reads no more than the
//! destination can take, and its pipes are back in the pool between syscalls.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::sys::cvt;

/// Sizes tried for a new pipe, largest first; the last is the kernel's default, which
/// needs no F_SETPIPE_SZ and is what every pipe gets once the budget is spent.
const SIZES: [usize; 3] = [1024 * 1024, 256 * 1024, 64 * 1024];

/// Pipe capacity the whole process may hold, shared by every worker's pool.
pub struct PipeBudget {
    limit: usize,
    held: AtomicUsize,
    /// Of `held`, the capacity of pipes waiting for a full destination; at most half
    /// of `limit`, so the other half is left to pipes that keep moving.
    waiting: AtomicUsize,
}

impl PipeBudget {
    /// A budget of `limit` bytes of pipe capacity.
    pub fn new(limit: usize) -> Arc<PipeBudget> {
        Arc::new(PipeBudget {
            limit,
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Half the per-user soft limit (`fs.pipe-user-pages-soft`, else `-hard`), leaving
    /// the rest to the user's other processes; unlimited when neither is set.
    pub fn from_system() -> Arc<PipeBudget> {
        let pages = |name: &str| -> Option<usize> {
            std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let limit = match (pages("pipe-user-pages-soft"), pages("pipe-user-pages-hard")) {
            (Some(soft), _) if soft > 0 => soft,
            (_, Some(hard)) if hard > 0 => hard,
            (Some(0), _) => usize::MAX,
            // Unreadable /proc: assume the kernel's default soft limit.
            _ => 16384,
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        PipeBudget::new(limit.saturating_mul(page) / 2)
    }

    /// Reserves the largest size in `SIZES` that fits; `None` once none does.
    fn reserve(&self) -> Option<usize> {
        SIZES.into_iter().find(|&size| {
            self.held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    (held + size <= self.limit).then_some(held + size)
                })
                .is_ok()
        })
    }

    fn release(&self, size: usize) {
        self.held.fetch_sub(size, Ordering::Relaxed);
    }

    /// Reserves `size` of the half of the budget that waiting pipes may hold.
    fn reserve_wait(&self, size: usize) -> bool {
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting + size <= self.limit / 2).then_some(waiting + size)
            })
            .is_ok()
    }
}

/// A pipe's leave to wait for a full destination with bytes in it; given back when
/// dropped. Taken per pass, so a connection holds it only while it has such bytes.
pub struct WaitShare<'a>(&'a Pipe);

impl Drop for WaitShare<'_> {
    fn drop(&mut self) {
        let pipe = self.0;
        pipe.budget
            .waiting
            .fetch_sub(pipe.reserved, Ordering::Relaxed);
    }
}

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// What this pipe reserved from the budget, returned when it is closed.
    reserved: usize,
    budget: Arc<PipeBudget>,
}

impl Pipe {
    /// A pipe within the budget; `Ok(None)` when the budget is spent.
    fn new(budget: &Arc<PipeBudget>) -> io::Result<Option<Pipe>> {
        let Some(reserved) = budget.reserve() else {
            return Ok(None);
        };
        let mut fds = [0; 2];
        if let Err(e) =
            // SAFETY: fds has room for the two descriptors pipe2 returns.
            cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })
        {
            budget.release(reserved);
            return Err(e);
        }
        // SAFETY: pipe2 succeeded, so both fds are new and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe {
            read,
            write,
            capacity: 0,
            reserved,
            budget: budget.clone(),
        };
        // On error the drop returns the reservation.
        pipe.capacity = pipe.resize(pipe.reserved)?;
        Ok(Some(pipe))
    }

    /// Asks for `size`; the kernel refuses above `fs.pipe-max-size` or when the user is
    /// already over its pipe limit, and the pipe keeps the size it has.
    fn resize(&self, size: usize) -> io::Result<usize> {
        let fd = self.write.as_raw_fd();
        // SAFETY: plain fcntl on our own fd.
        match unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) } {
            n if n > 0 => Ok(n as usize),
            // SAFETY: as above.
            _ => Ok(cvt(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) })? as usize),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Leave to fill the pipe whatever the destination can take and wait for it with
    /// the rest; `None` once half the budget is held by waiting pipes.
    pub fn wait_share(&self) -> Option<WaitShare<'_>> {
        // Not then_some: a WaitShare made and dropped unreserved would give back what
        // was never taken.
        self.budget
            .reserve_wait(self.reserved)
            .then(|| WaitShare(self))
    }

    /// Reads out the `len` bytes the pipe holds, leaving it empty (and fit for reuse).
    pub fn drain(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match crate::sys::read(self.read_fd(), &mut bytes[got..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(bytes)
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    budget: Arc<PipeBudget>,
    keep: usize,
    /// Whether a pipe was taken since the last [`PipePool::trim`].
    used: Cell<bool>,
}

impl PipePool {
    /// A worker's pool drawing on the process-wide `budget`; `keep` bounds how many
    /// empty pipes stay open for reuse.
    pub fn new(budget: Arc<PipeBudget>, keep: usize) -> PipePool {
        PipePool {
            free: RefCell::new(Vec::new()),
            budget,
            keep,
            used: Cell::new(false),
        }
    }

    /// A pipe for one burst, or `None` when none may be had (the budget is spent, or
    /// no fd is left): the caller copies instead.
    pub fn get(&self) -> Option<Pipe> {
        self.used.set(true);
        if let Some(pipe) = self.free.borrow_mut().pop() {
            return Some(pipe);
        }
        match Pipe::new(&self.budget) {
            Ok(pipe) => pipe,
            Err(e) => {
                crate::debug!("no pipe for splicing ({e}); copying instead");
                None
            }
        }
    }

    /// Takes back a pipe that must be empty: leftover bytes would leak into another
    /// connection's stream.
    pub fn put(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        }
    }

    /// Closes every kept pipe if none was taken since the last call: run every few
    /// seconds, so an idle worker gives its pipe memory back to the user's budget.
    pub fn trim(&self) {
        if !self.used.replace(false) {
            self.free.borrow_mut().clear();
        }
    }

    /// Empty pipes kept for reuse.
    pub fn kept(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_shrink_as_the_budget_runs_out_and_none_is_made_past_it() {
        let budget = PipeBudget::new(1024 * 1024 + 256 * 1024 + 64 * 1024);
        let pool = PipePool::new(budget.clone(), 0);
        let first = pool.get().unwrap();
        let second = pool.get().unwrap();
        let third = pool.get().unwrap();
        // fs.pipe-max-size may be below 1 MiB on this host: compare with what was asked.
        assert_eq!(first.reserved, 1024 * 1024);
        assert_eq!(second.reserved, 256 * 1024);
        assert_eq!(third.reserved, 64 * 1024);
        assert!(first.capacity() <= first.reserved && first.capacity() >= 64 * 1024);
        assert_eq!(third.capacity(), 64 * 1024);
        // The budget is spent: no pipe, so nothing is held past it.
        assert!(pool.get().is_none());
        assert_eq!(budget.held.load(Ordering::Relaxed), budget.limit);
        drop((first, second, third));
        assert_eq!(budget.held.load(Ordering::Relaxed), 0);
        assert_eq!(pool.get().unwrap().reserved, 1024 * 1024);
    }

    #[test]
    fn at_most_half_the_budget_waits() {
        let budget = PipeBudget::new(4 << 20);
        let pool = PipePool::new(budget.clone(), 0);
        let pipes: Vec<Pipe> = (0..4).map(|_| pool.get().unwrap()).collect();
        let first = pipes[0].wait_share().expect("a quarter of the budget");
        let second = pipes[1].wait_share().expect("half of it");
        assert!(pipes[2].wait_share().is_none(), "past half the budget");
        drop(first);
        let third = pipes[2].wait_share().expect("half again, one given back");
        drop((second, third));
        assert_eq!(budget.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_idle_pool_gives_its_pipes_back() {
        let budget = PipeBudget::new(4 << 20);
        let pool = PipePool::new(budget.clone(), 8);
        let (a, b) = (pool.get().unwrap(), pool.get().unwrap());
        pool.put(a);
        pool.put(b);
        pool.trim();
        assert_eq!(pool.kept(), 2, "used since the last trim: kept");
        pool.trim();
        assert_eq!(pool.kept(), 0, "unused for a whole period: closed");
        assert_eq!(budget.held.load(Ordering::Relaxed), 0);
    }
}
