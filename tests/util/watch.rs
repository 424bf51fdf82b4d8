//! inotify, to see from the outside whether the server opened or read a file: a test of
//! "never opened" needs a witness that does not depend on the server's own account.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Watches files for opens and reads (`IN_OPEN | IN_ACCESS`); an `O_PATH` lookup, which
/// opens nothing, raises no event.
pub struct OpenWatch {
    fd: OwnedFd,
}

impl OpenWatch {
    pub fn new(paths: &[&Path]) -> OpenWatch {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: inotify_init1 just returned this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for path in paths {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid inotify fd and NUL-terminated path.
            let wd = unsafe {
                libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS)
            };
            assert!(
                wd >= 0,
                "watch {path:?}: {}",
                std::io::Error::last_os_error()
            );
        }
        OpenWatch { fd }
    }

    /// How many opens and reads happened since the watch began (or the last call).
    pub fn events(&self) -> usize {
        let mut buf = [0u8; 4096];
        let mut count = 0;
        loop {
            // SAFETY: buf is writable for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return count;
            }
            let mut at = 0;
            while at < n as usize {
                // SAFETY: the kernel writes whole events, each header followed by `len`
                // bytes of name; the buffer is not aligned for the header, hence unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                count += 1;
                at += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
            }
        }
    }
}
