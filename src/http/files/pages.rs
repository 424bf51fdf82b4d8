//! Where a file's pages are, as far as a worker may know without waiting for the disk:
//! which files an I/O thread read in lately (their readahead may still be in flight),
//! and which ranges were found wholly cached lately. The tables belong to the [`Root`]
//! whose files they describe, and are shared by its workers.
//!
//! [`Root`]: super::Root

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Slots per table; collisions only send more to the I/O threads, or check the page cache
/// once more.
const SLOTS: usize = 4096;

/// How long after an I/O thread's last read of a file its pages stay with the threads.
const READ_IN_SETTLES: u32 = 2;

/// A file's identity in the tables, and whether the worker may ever send its pages.
#[derive(Clone, Copy, Debug)]
pub struct Pages {
    /// The file's identity (inode and device), hashed.
    key: u64,
    slot: usize,
    local: bool,
}

impl Pages {
    /// `root_dev`: the root's device when it is a local file system; a file on another
    /// device (a mount under the root) is sent only by I/O threads.
    pub fn new(stat: &libc::statx, root_dev: Option<(u32, u32)>) -> Pages {
        let dev = (stat.stx_dev_major, stat.stx_dev_minor);
        let key = mix(stat.stx_ino ^ (u64::from(dev.0) << 40) ^ (u64::from(dev.1) << 20));
        Pages {
            key,
            slot: (key >> 52) as usize % SLOTS,
            local: root_dev == Some(dev),
        }
    }
}

pub struct PageTables {
    /// When (seconds on [`PageTables::clock`]) pages of a file were last read in from the
    /// disk by an I/O thread, by a hash of its identity. cachestat(2) counts a page still
    /// being read in as cached, and a sendfile that meets one waits for the disk; the
    /// readahead of a file read cold is in flight for a while after the read that
    /// started it, so for [`READ_IN_SETTLES`] after the last read its pages stay with the
    /// threads. Shared by every worker: a popular file being read in by one is as unsafe
    /// for the others.
    read_in: Box<[AtomicU32]>,
    /// Ranges cachestat(2) found wholly cached lately: (a 32-bit tag of file, offset and
    /// length) << 32 | the second on the clock, by a hash of the same. cachestat walks
    /// every page (about 12 µs per MiB here), which for a hot 1 MiB file was most of a
    /// request's cost; a hot file is asked for the same ranges again and again, so a
    /// range found cached is trusted for the rest of that second and the next. Its first
    /// and last pages are still probed every time.
    found_cached: Box<[AtomicU64]>,
    start: Instant,
}

impl Default for PageTables {
    fn default() -> PageTables {
        PageTables {
            read_in: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            found_cached: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            start: Instant::now(),
        }
    }
}

impl PageTables {
    /// Whole seconds since the tables were made, starting at 1 so that 0 means never.
    fn clock(&self) -> u32 {
        self.start.elapsed().as_secs() as u32 + 1
    }

    /// Whether the worker may send cached pages of this file now.
    pub fn worker_may_send(&self, pages: Pages) -> bool {
        let last_read_in = self.read_in[pages.slot].load(Ordering::Relaxed);
        pages.local && (last_read_in == 0 || self.clock() - last_read_in > READ_IN_SETTLES)
    }

    /// An I/O thread just read pages of this file from the disk.
    pub fn read_in_now(&self, pages: Pages) {
        self.read_in[pages.slot].store(self.clock(), Ordering::Relaxed);
    }

    /// Whether `len` (> 0) bytes of `file` from `offset` can be sent without waiting for
    /// the disk: the first and the last page are up to date (a readahead still in flight
    /// sits at the end of a range) and every page between is in the page cache. When the
    /// kernel cannot tell (no cachestat(2) before 6.5, no RWF_NOWAIT on this file
    /// system), the answer is no: an I/O thread sends it, which is slower but never
    /// stalls a worker.
    pub fn cached(&self, file: &File, pages: Pages, offset: u64, len: u64) -> bool {
        let fd = file.as_raw_fd();
        let page = page_size();
        let (first, last) = (offset / page, (offset + len - 1) / page);
        let ready = |at: u64| matches!(crate::sys::readable_now(fd, at), Ok(true));
        if !ready(offset) || (last > first && !ready(offset + len - 1)) {
            return false;
        }
        let count = last - first + 1;
        count <= 2 || self.all_pages_cached(fd, pages, (offset, len), count)
    }

    /// Whether every page of the range is in the page cache, from `found_cached` when it
    /// was checked within about a second, else from cachestat(2).
    fn all_pages_cached(
        &self,
        fd: libc::c_int,
        pages: Pages,
        (offset, len): (u64, u64),
        count: u64,
    ) -> bool {
        let range = mix(pages.key ^ mix(offset ^ mix(len)));
        let (tag, entry) = (
            range >> 32,
            &self.found_cached[(range >> 20) as usize % SLOTS],
        );
        let now = u64::from(self.clock());
        let found = entry.load(Ordering::Relaxed);
        if found >> 32 == tag && now - (found & 0xFFFF_FFFF) <= 1 {
            return true;
        }
        let cached = matches!(crate::sys::cached_pages(fd, offset, len), Ok(n) if n >= count);
        if cached {
            entry.store(tag << 32 | now, Ordering::Relaxed);
        }
        cached
    }
}

/// Fibonacci hashing: inode numbers and offsets are often sequential.
fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, dev: (u32, u32)) -> libc::statx {
        // SAFETY: statx is plain data; zeroed is a valid value.
        let mut stat: libc::statx = unsafe { std::mem::zeroed() };
        stat.stx_ino = ino;
        stat.stx_dev_major = dev.0;
        stat.stx_dev_minor = dev.1;
        stat
    }

    #[test]
    fn a_file_read_in_lately_or_on_another_mount_stays_with_the_threads() {
        let tables = PageTables::default();
        let root = Some((8, 1));
        let fresh = Pages::new(&stat(77_001, (8, 1)), root);
        assert!(
            tables.worker_may_send(fresh),
            "never read in: the worker may send"
        );
        tables.read_in_now(fresh);
        assert!(
            !tables.worker_may_send(fresh),
            "just read in: readahead may be in flight"
        );
        assert!(
            PageTables::default().worker_may_send(fresh),
            "another root's tables know nothing of it"
        );
        assert!(!tables.worker_may_send(Pages::new(&stat(77_002, (0, 45)), root)));
        assert!(!tables.worker_may_send(Pages::new(&stat(77_003, (8, 1)), None)));
    }

    #[test]
    fn sequential_inodes_spread_over_the_table() {
        let slots: std::collections::HashSet<usize> = (1000..2000u64)
            .map(|ino| Pages::new(&stat(ino, (8, 1)), None).slot)
            .collect();
        assert!(
            slots.len() > 750,
            "{} distinct slots for 1,000 inodes",
            slots.len()
        );
    }
}
