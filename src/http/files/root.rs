//! The served directory and opening files under it without ever leaving it.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::conditional::FileInfo;
use super::pages::{PageTables, Pages};
use super::path::RelPath;
use super::walk;
use crate::http::response::{self, Status};

/// The served directory, opened once; files are opened relative to it.
pub struct Root {
    dir: OwnedFd,
    /// Where the root really is, for absolute symlinks to be checked against.
    canonical: PathBuf,
    pub follow_symlinks: bool,
    pub autoindex: bool,
    /// openat2(2) works here (Linux 5.6+, and not blocked by a seccomp filter).
    openat2: AtomicBool,
    /// The root's device, when its file system keeps its pages like a local disk does;
    /// `None` on FUSE and network file systems, whose cached pages the worker never
    /// touches (an open may invalidate them, a read may wait on a server).
    local_dev: Option<(u32, u32)>,
    /// What the workers know of where this tree's pages are.
    pub pages: PageTables,
}

const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

impl Root {
    pub fn new(path: &Path, follow_symlinks: bool, autoindex: bool) -> io::Result<Root> {
        let canonical = std::fs::canonicalize(path)?;
        let c_path = std::ffi::CString::new(canonical.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated path; the returned fd is ours.
        let fd = crate::sys::cvt(unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: open just returned this fd.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let local_dev = if crate::sys::is_remote_or_fuse(dir.as_raw_fd())? {
            crate::info!(
                "{} is on a network or FUSE file system: every file is opened and sent by I/O threads",
                canonical.display()
            );
            None
        } else {
            let stat = crate::sys::stat_cached(dir.as_raw_fd())?;
            Some((stat.stx_dev_major, stat.stx_dev_minor))
        };
        Ok(Root {
            dir,
            canonical,
            follow_symlinks,
            autoindex,
            openat2: AtomicBool::new(true),
            local_dev,
            pages: PageTables::default(),
        })
    }

    /// Opens `rel` only if that cannot wait for the disk: every path component is in
    /// the kernel's lookup cache (openat2's RESOLVE_CACHED, Linux 5.12). `Ok(None)` when
    /// it would have to read a directory or inode, or the kernel cannot tell; then
    /// [`Self::open`] on an I/O thread does it.
    pub fn open_cached(&self, rel: &RelPath) -> Result<Option<File>, Status> {
        if !self.openat2.load(Ordering::Relaxed) || self.local_dev.is_none() {
            return Ok(None);
        }
        let c_rel = rel.as_c_str().ok_or(response::BAD_REQUEST)?;
        // RESOLVE_NO_XDEV: a path into another mount (maybe FUSE or NFS, whose open can
        // wait on its server) is opened by an I/O thread.
        let cached = libc::RESOLVE_CACHED | libc::RESOLVE_NO_XDEV;
        let resolve = if self.follow_symlinks {
            cached
        } else {
            cached | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS
        };
        match self.openat2(c_rel, resolve) {
            Ok(file) => Ok(Some(file)),
            Err(e) => match e.raw_os_error() {
                // Not cached, an absolute symlink to decide by where it leads, or no
                // openat2 (the blocking path notices and remembers).
                Some(libc::EAGAIN | libc::EXDEV | libc::ELOOP | libc::ENOSYS | libc::EPERM) => {
                    Ok(None)
                }
                // EINVAL: a kernel before 5.12 does not know RESOLVE_CACHED.
                Some(libc::EINVAL) => Ok(None),
                _ => Err(open_status(e, rel)),
            },
        }
    }

    fn openat2(&self, rel: &CStr, resolve: u64) -> io::Result<File> {
        // SAFETY: open_how is plain data; zeroed then filled is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = OPEN_FLAGS as u64;
        how.resolve = resolve;
        // SAFETY: valid dirfd, NUL-terminated path and open_how of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat2 returned a new fd.
        Ok(unsafe { File::from_raw_fd(rc as libc::c_int) })
    }

    /// Opens `rel` under the root; may wait for the disk, so it runs on an I/O thread.
    /// Symlinks that lead outside the root are refused (403) unless `--follow-symlinks`,
    /// and what they lead to is never opened, stat'ed or looked up.
    pub fn open(&self, rel: &RelPath) -> Result<File, Status> {
        let c_rel = rel.as_c_str().ok_or(response::BAD_REQUEST)?;
        if self.follow_symlinks {
            return self.openat(c_rel).map_err(|e| open_status(e, rel));
        }
        if self.openat2.load(Ordering::Relaxed) {
            // RESOLVE_BENEATH makes the kernel refuse any escape in the one open call.
            let e = match self.openat2(c_rel, libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS) {
                Ok(file) => return Ok(file),
                Err(e) => e,
            };
            match e.raw_os_error() {
                // An absolute symlink is refused even when it points inside the root,
                // and an escape is refused the same way: the walk tells them apart
                // without opening anything outside.
                Some(libc::EXDEV | libc::ELOOP) => {}
                Some(libc::ENOSYS | libc::EPERM) => {
                    crate::debug!("openat2 is unavailable ({e}); resolving symlinks by hand");
                    self.openat2.store(false, Ordering::Relaxed);
                }
                _ => return Err(open_status(e, rel)),
            }
        }
        let found = walk::open_beneath(
            self.dir.as_fd(),
            &self.canonical,
            rel.as_bytes(),
            OPEN_FLAGS,
        );
        match found.map_err(|e| open_status(e, rel))? {
            walk::Found::File(file) => Ok(file),
            walk::Found::Other => Err(response::FORBIDDEN),
        }
    }

    fn openat(&self, rel: &CStr) -> io::Result<File> {
        // SAFETY: valid dirfd and NUL-terminated path; the returned fd is ours.
        let fd = crate::sys::cvt(unsafe {
            libc::openat(self.dir.as_raw_fd(), rel.as_ptr(), OPEN_FLAGS)
        })?;
        // SAFETY: openat just returned this fd.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// What a failed open is answered; a 500 also leaves a log line naming the path and the
/// cause, since nothing the client did explains it.
fn open_status(e: io::Error, rel: &RelPath) -> Status {
    let status = errno_status(&e);
    if status == response::INTERNAL_SERVER_ERROR {
        crate::warn!(
            "failed to open {} under --root: {e}; answered 500",
            String::from_utf8_lossy(rel.as_bytes())
        );
    }
    status
}

fn errno_status(e: &io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => response::NOT_FOUND,
        // ENXIO: a socket or a device with no driver; never served, like FIFOs.
        Some(
            libc::EACCES | libc::EPERM | libc::ELOOP | libc::EXDEV | libc::ENXIO | libc::ENODEV,
        ) => response::FORBIDDEN,
        // Out of fds or memory: the client may retry shortly (on a new connection, which
        // the listen backlog holds until one is free).
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => response::SERVICE_UNAVAILABLE,
        _ => response::INTERNAL_SERVER_ERROR,
    }
}

/// What an opened path is, for the answer.
pub enum Kind {
    File(FileInfo, Pages),
    Dir,
    /// FIFOs, sockets, devices: never served.
    Other,
}

impl Root {
    /// What `file` is; `now` (seconds since the epoch) bounds a file's Last-Modified.
    /// Asks only for attributes the kernel holds for an open file, so it never waits for
    /// the disk or a FUSE daemon.
    pub fn kind(&self, file: &File, rel: &RelPath, now: i64) -> Result<Kind, Status> {
        let stat = crate::sys::stat_cached(file.as_raw_fd()).map_err(|e| {
            crate::warn!(
                "failed to stat {} under --root: {e}; answered 500",
                String::from_utf8_lossy(rel.as_bytes())
            );
            response::INTERNAL_SERVER_ERROR
        })?;
        Ok(match u32::from(stat.stx_mode) & libc::S_IFMT {
            libc::S_IFREG => Kind::File(
                FileInfo::new(stat.stx_size, stat.stx_mtime.tv_sec, now),
                Pages::new(&stat, self.local_dev),
            ),
            libc::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        })
    }
}
