//! Opening a path under the root one component at a time, so that a symlink leading out
//! of the root is refused before anything it points to is opened, stat'ed or even looked
//! up: what `openat2(RESOLVE_BENEATH)` refuses wholesale (absolute symlinks, whether they
//! stay inside or not) is decided here by where each link says it leads.
//!
//! Every component is looked up with `O_PATH | O_NOFOLLOW` relative to the directory
//! before it (which opens nothing: no driver, no FIFO), links are read and resolved
//! here, and `..` is taken off our own stack of directories, never asked of the kernel:
//! a `..` above the root, or an absolute link whose target does not start with the
//! root's canonical path, is an escape and gets 403 whether its target exists or not.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Symlinks followed for one path at most, as the kernel's MAXSYMLINKS.
const MAX_LINKS: usize = 40;

const DOT: &CStr = match CStr::from_bytes_with_nul(b".\0") {
    Ok(dot) => dot,
    Err(_) => panic!("a NUL-terminated literal"),
};

/// What [`open_beneath`] found at the end of the path.
pub enum Found {
    File(File),
    /// A FIFO, socket or device: never opened, never served.
    Other,
}

/// Opens `rel` (decoded and normalised, relative to the root) under `root`, whose
/// canonical path is `canonical`, following symlinks only while they stay inside.
/// `flags`: how to open the last component (O_NOFOLLOW is added). Errors are what the
/// kernel would say: EXDEV for an escape (as `RESOLVE_BENEATH`), ELOOP for too many
/// links, ENOTDIR for a file with more path after it.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    canonical: &Path,
    rel: &[u8],
    flags: libc::c_int,
) -> io::Result<Found> {
    let mut walk = Walk {
        dirs: Vec::new(),
        pending: components(rel).rev().map(<[u8]>::to_vec).collect(),
        links: 0,
    };
    while let Some(name) = walk.pending.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                // Popping past the root would climb out of it.
                walk.dirs.pop().ok_or_else(escape)?;
                continue;
            }
            _ => {}
        }
        let dir = walk.dirs.last().map_or(root, |d| d.as_fd());
        let name = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
        let entry = crate::sys::open_path_nofollow(dir, &name)?;
        let last = walk.pending.is_empty();
        match file_type(entry.as_fd())? {
            libc::S_IFLNK => walk.follow(entry.as_fd(), canonical)?,
            libc::S_IFDIR if !last => walk.dirs.push(entry),
            _ if !last => return Err(errno(libc::ENOTDIR)),
            libc::S_IFDIR | libc::S_IFREG => {
                // O_NOFOLLOW: if the name became a symlink since the lookup, it fails
                // (ELOOP) instead of following it.
                return crate::sys::open_nofollow(dir, &name, flags).map(Found::File);
            }
            _ => return Ok(Found::Other),
        }
    }
    // Only `.` and `..` components: the root itself, or a directory on our stack.
    let dir = walk.dirs.last().map_or(root, |d| d.as_fd());
    crate::sys::open_nofollow(dir, DOT, flags).map(Found::File)
}

fn errno(code: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// An escape from the root, said as openat2's RESOLVE_BENEATH says it.
fn escape() -> io::Error {
    errno(libc::EXDEV)
}

/// The walk so far: the directories entered below the root, and the components still to
/// look up (last first, so the next is popped off the end).
struct Walk {
    dirs: Vec<OwnedFd>,
    pending: Vec<Vec<u8>>,
    links: usize,
}

impl Walk {
    /// Puts the target of the symlink `link` in front of what is left to look up: a
    /// relative target from the directory the link is in, an absolute one from the root
    /// when it names a place under the root's canonical path (else the walk is refused).
    fn follow(&mut self, link: BorrowedFd<'_>, canonical: &Path) -> io::Result<()> {
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(errno(libc::ELOOP));
        }
        let target = crate::sys::read_link_fd(link)?;
        let rest = match target.strip_prefix(b"/") {
            None => &target[..],
            Some(absolute) => {
                let inside = strip_root(absolute, canonical).ok_or_else(escape)?;
                self.dirs.clear();
                inside
            }
        };
        // Next to look up: the target's components, before what is left of the path.
        self.pending
            .extend(components(rest).rev().map(<[u8]>::to_vec));
        Ok(())
    }
}

/// `absolute` (without its leading `/`) past the root's own canonical path, or `None`
/// when it does not start with it. Compared component by component, as written: a
/// target that reaches the root through `..` or another link is refused rather than
/// resolved outside the root.
fn strip_root<'a>(absolute: &'a [u8], canonical: &Path) -> Option<&'a [u8]> {
    use std::os::unix::ffi::OsStrExt;
    let mut rest = absolute;
    for want in components(canonical.as_os_str().as_bytes()).filter(|c| !c.is_empty()) {
        rest = trim_slashes(rest);
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        if &rest[..end] != want {
            return None;
        }
        rest = &rest[end..];
    }
    Some(trim_slashes(rest))
}

fn trim_slashes(mut path: &[u8]) -> &[u8] {
    while let [b'/', rest @ ..] = path {
        path = rest;
    }
    path
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
}

/// The `S_IFMT` bits of what `fd` refers to.
fn file_type(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let stat = crate::sys::stat_cached(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok(u32::from(stat.stx_mode) & libc::S_IFMT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_must_start_with_the_canonical_root() {
        let root = Path::new("/srv/mirror");
        assert_eq!(
            strip_root(b"srv/mirror/pool/a.deb", root),
            Some(&b"pool/a.deb"[..])
        );
        assert_eq!(strip_root(b"srv//mirror/", root), Some(&b""[..]));
        assert_eq!(strip_root(b"srv/mirror", root), Some(&b""[..]));
        assert_eq!(strip_root(b"srv/mirrors/x", root), None);
        assert_eq!(strip_root(b"srv/x/../mirror/a", root), None);
        assert_eq!(strip_root(b"etc/shadow", root), None);
        assert_eq!(strip_root(b"", root), None);
        assert_eq!(
            strip_root(b"anything", Path::new("/")),
            Some(&b"anything"[..])
        );
    }
}
