//! Work on the mirror tree that may wait for the disk, kept off the worker: opening a
//! path whose directories are not cached, sending pages that are not, and listing a
//! directory. Each runs on an I/O thread (`runtime::blocking`) while the worker goes on
//! with its other connections; what is cached stays on the worker, where it is cheapest.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::path::RelPath;
use super::root::{Kind, Root};
use crate::http::response::{self, Status};
use crate::runtime::blocking;

/// Opens `rel` under `root` and says what it is. On the worker when the kernel has
/// every path component cached; else on an I/O thread. `offloaded` is told which.
pub async fn open(
    root: &Arc<Root>,
    rel: &RelPath,
    now: i64,
    offloaded: &mut bool,
) -> Result<(File, Kind), Status> {
    if let Some(file) = root.open_cached(rel)? {
        let kind = root
            .kind(&file, now)
            .map_err(|_| response::INTERNAL_SERVER_ERROR)?;
        return Ok((file, kind));
    }
    *offloaded = true;
    let (root, rel) = (root.clone(), rel.clone());
    blocking::run(move || {
        let file = root.open(&rel)?;
        let kind = root
            .kind(&file, now)
            .map_err(|_| response::INTERNAL_SERVER_ERROR)?;
        Ok((file, kind))
    })
    .await
    .unwrap_or(Err(response::INTERNAL_SERVER_ERROR))
}

/// An `--autoindex` listing of `dir`, made on an I/O thread: reading a directory that
/// is not cached waits for the disk, and a big one takes a while even when it is.
pub async fn list(dir: File, url_path: Vec<u8>) -> io::Result<Vec<u8>> {
    blocking::run(move || {
        let mut html = Vec::new();
        super::listing::autoindex(&dir, &url_path, &mut html).map(|()| html)
    })
    .await
    .unwrap_or_else(|| Err(io::Error::other("the I/O thread dropped the listing")))
}

/// Where a file's pages are, as far as the worker is concerned: whether it may ever send
/// them itself, and the file's slot in [`READ_IN`].
#[derive(Clone, Copy, Debug)]
pub struct Pages {
    /// The file's identity (inode and device), hashed.
    key: u64,
    slot: usize,
    local: bool,
}

/// When (seconds on [`clock`]) pages of a file were last read in from the disk by an I/O
/// thread, by a hash of the file's inode; collisions only send more to the threads.
/// cachestat(2) counts a page still being read in as cached, and a sendfile that meets
/// one waits for the disk; the readahead of a file read cold is in flight for a while
/// after the read that started it, so for [`READ_IN_SETTLES`] after the last read its
/// pages stay with the threads. Shared by every worker: a popular file being read in
/// by one is as unsafe for the others.
static READ_IN: [AtomicU32; 4096] = [NEVER; 4096];
#[allow(clippy::declare_interior_mutable_const)] // only ever copied into READ_IN
const NEVER: AtomicU32 = AtomicU32::new(0);
const READ_IN_SETTLES: u32 = 2;

/// Whole seconds since the first call, starting at 1 so that 0 means never.
fn clock() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_secs() as u32 + 1
}

impl Pages {
    /// `root_dev`: the root's device when it is a local file system; a file on another
    /// device (a mount under the root) is sent only by I/O threads.
    pub fn new(stat: &libc::statx, root_dev: Option<(u32, u32)>) -> Pages {
        let dev = (stat.stx_dev_major, stat.stx_dev_minor);
        let key = mix(stat.stx_ino ^ (u64::from(dev.0) << 40) ^ (u64::from(dev.1) << 20));
        Pages {
            key,
            slot: (key >> 52) as usize % READ_IN.len(),
            local: root_dev == Some(dev),
        }
    }

    /// Whether the worker may send cached pages of this file now.
    pub fn worker_may_send(self) -> bool {
        let last_read_in = READ_IN[self.slot].load(Ordering::Relaxed);
        self.local && (last_read_in == 0 || clock() - last_read_in > READ_IN_SETTLES)
    }

    /// An I/O thread just read pages of this file from the disk.
    pub fn read_in_now(self) {
        READ_IN[self.slot].store(clock(), Ordering::Relaxed);
    }
}

/// Fibonacci hashing: inode numbers and offsets are often sequential.
fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Ranges cachestat(2) found wholly cached lately: (a 32-bit tag of file, offset and
/// length) << 32 | the second on [`clock`], by a hash of the same. cachestat walks every
/// page (about 12 µs per MiB here), which for a hot 1 MiB file was most of a request's
/// cost; a hot file is asked for the same ranges again and again, so a range found
/// cached is trusted for the rest of that second and the next. Its first and last pages
/// are still probed every time.
static FOUND_CACHED: [AtomicU64; 4096] = [NOT_FOUND; 4096];
#[allow(clippy::declare_interior_mutable_const)] // only ever copied into FOUND_CACHED
const NOT_FOUND: AtomicU64 = AtomicU64::new(0);

/// Whether every page of the range is in the page cache, from [`FOUND_CACHED`] when it
/// was checked within about a second, else from cachestat(2).
fn all_pages_cached(fd: libc::c_int, pages: Pages, offset: u64, len: u64, count: u64) -> bool {
    let range = mix(pages.key ^ mix(offset ^ mix(len)));
    let (tag, entry) = (
        range >> 32,
        &FOUND_CACHED[(range >> 20) as usize % FOUND_CACHED.len()],
    );
    let now = u64::from(clock());
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

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

/// Whether `len` (> 0) bytes of `file` from `offset` can be sent without waiting for
/// the disk: the first and the last page are up to date (a readahead still in flight
/// sits at the end of a range) and every page between is in the page cache. When the
/// kernel cannot tell (no cachestat(2) before 6.5, no RWF_NOWAIT on this file system),
/// the answer is no: an I/O thread sends it, which is slower but never stalls a worker.
pub fn cached(file: &File, pages: Pages, offset: u64, len: u64) -> bool {
    let fd = file.as_raw_fd();
    let page = page_size();
    let (first, last) = (offset / page, (offset + len - 1) / page);
    let ready = |at: u64| matches!(crate::sys::readable_now(fd, at), Ok(true));
    if !ready(offset) || (last > first && !ready(offset + len - 1)) {
        return false;
    }
    let count = last - first + 1;
    count <= 2 || all_pages_cached(fd, pages, offset, len, count)
}

/// One sendfile(2) of up to `len` bytes from `offset` on an I/O thread, which may wait
/// for the disk; the socket is non-blocking, so it returns as soon as the socket is
/// full (WouldBlock if it already was) and no thread waits on a slow client. Given up
/// after `stall`: a read that hangs (a FUSE daemon that never answers) must not hold the
/// connection forever; the socket is then shut down, as the thread may still own it.
pub async fn send(
    socket: &Arc<OwnedFd>,
    file: &Arc<File>,
    pages: Pages,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<usize> {
    let raw_socket = socket.as_raw_fd();
    let (socket, file) = (socket.clone(), file.clone());
    let job = blocking::run(move || {
        let mut off = offset as libc::off_t;
        let blocks_before = crate::sys::blocks_read_by_this_thread();
        let result = loop {
            match crate::sys::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, len as usize)
            {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result,
            }
        };
        // Only a send that read from the disk (readahead included) leaves pages in flight;
        // marking every send would keep a hot file with the threads for good once one
        // send of it went there.
        if crate::sys::blocks_read_by_this_thread() != blocks_before {
            pages.read_in_now();
        }
        (result, socket)
    });
    monoio::select! {
        done = job => match done {
            Some((result, _socket)) => result,
            None => Err(io::Error::other("the I/O thread dropped a file read")),
        },
        _ = monoio::time::sleep(stall) => {
            // The thread's copy keeps the socket open: end the connection for both.
            crate::sys::shutdown_both(raw_socket);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a file read took longer than the send timeout",
            ))
        }
    }
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
        let root = Some((8, 1));
        let fresh = Pages::new(&stat(77_001, (8, 1)), root);
        assert!(
            fresh.worker_may_send(),
            "never read in: the worker may send"
        );
        fresh.read_in_now();
        assert!(
            !fresh.worker_may_send(),
            "just read in: readahead may be in flight"
        );
        assert!(!Pages::new(&stat(77_002, (0, 45)), root).worker_may_send());
        assert!(!Pages::new(&stat(77_003, (8, 1)), None).worker_may_send());
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
