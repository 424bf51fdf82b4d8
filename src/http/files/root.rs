//! The served directory and opening files under it without ever leaving it.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::conditional::FileInfo;
use super::path::RelPath;
use crate::http::response::{self, Status};

/// The served directory, opened once; files are opened relative to it.
pub struct Root {
    dir: OwnedFd,
    /// Where the root really is, to check where a symlink led.
    canonical: PathBuf,
    pub follow_symlinks: bool,
    pub autoindex: bool,
    /// openat2(2) works here (Linux 5.6+, and not blocked by a seccomp filter).
    openat2: AtomicBool,
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
        Ok(Root {
            // SAFETY: open just returned this fd.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            canonical,
            follow_symlinks,
            autoindex,
            openat2: AtomicBool::new(true),
        })
    }

    /// Opens `rel` under the root. Symlinks that lead outside it are refused (403) unless
    /// `--follow-symlinks`.
    pub fn open(&self, rel: &RelPath) -> Result<File, Status> {
        let rel = rel.as_c_str().ok_or(response::BAD_REQUEST)?;
        if self.follow_symlinks {
            return self.openat(rel).map_err(open_status);
        }
        if self.openat2.load(Ordering::Relaxed) {
            // RESOLVE_BENEATH makes the kernel refuse any escape in the one open call.
            // SAFETY: open_how is plain data; zeroed then filled is a valid value.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = OPEN_FLAGS as u64;
            how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
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
            if rc >= 0 {
                // SAFETY: openat2 returned a new fd.
                return Ok(unsafe { File::from_raw_fd(rc as libc::c_int) });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // An absolute symlink is refused even when it points inside the root:
                // decide that case below, by where the file really is.
                Some(libc::EXDEV | libc::ELOOP) => {}
                Some(libc::ENOSYS | libc::EPERM) => {
                    crate::debug!("openat2 is unavailable ({e}); checking symlinks by path");
                    self.openat2.store(false, Ordering::Relaxed);
                }
                _ => return Err(open_status(e)),
            }
        }
        let file = self.openat(rel).map_err(open_status)?;
        match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) if real.starts_with(&self.canonical) => Ok(file),
            Ok(_) => Err(response::FORBIDDEN),
            Err(_) => Err(response::INTERNAL_SERVER_ERROR),
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

fn open_status(e: io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => response::NOT_FOUND,
        Some(libc::EACCES | libc::EPERM | libc::ELOOP | libc::EXDEV) => response::FORBIDDEN,
        // Out of fds or memory: the client may retry shortly (on a new connection, which
        // the listen backlog holds until one is free).
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => response::SERVICE_UNAVAILABLE,
        _ => response::INTERNAL_SERVER_ERROR,
    }
}

/// What an opened path is, for the answer.
pub enum Kind {
    File(FileInfo),
    Dir,
    /// FIFOs, sockets, devices: never served.
    Other,
}

/// What `file` is; `now` (seconds since the epoch) bounds a file's Last-Modified.
pub fn kind(file: &File, now: i64) -> io::Result<Kind> {
    let meta = file.metadata()?;
    let ft = meta.file_type();
    Ok(if ft.is_file() {
        Kind::File(FileInfo::new(meta.len(), meta.mtime(), now))
    } else if ft.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    })
}
