//! File bodies: sendfile(2) on the non-blocking socket whenever the runtime reports it
//! writable, on the worker for pages in the page cache and on an I/O thread for pages
//! that must come off the disk. io_uring's SPLICE op is not used: the kernel punts it to
//! a worker thread that then sleeps on the socket, one per slow client.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::disk;
use super::pages::Pages;
use super::root::Root;
use crate::net::Stream;

/// Bytes checked for residency, and sent, at a time: one check stands for a whole chunk,
/// and an I/O thread reads at most this much per turn (nginx's sendfile_max_chunk).
const CHUNK: u64 = 2 << 20;
/// Bytes sent in a row before letting the worker's other connections run: a fast
/// client with a huge socket buffer must not monopolise the thread.
const FAIR_SHARE: u64 = 4 << 20;

/// How a body went out, for the counters.
#[derive(Default)]
pub struct Sent {
    /// All body bytes sent, also when it failed midway.
    pub bytes: u64,
    /// Of which an I/O thread sent these, in this many turns.
    pub from_disk: u64,
    pub disk_turns: u64,
}

/// Sends `len` bytes of `file` from `offset`, waiting for write readiness whenever the
/// socket buffer is full. A client that stops reading parks only this task, and is
/// dropped after `stall` without progress.
pub async fn send_file(
    stream: &Stream,
    root: &Arc<Root>,
    file: &Arc<File>,
    pages: Pages,
    (offset, len): (u64, u64),
    stall: Duration,
    sent: &mut Sent,
) -> io::Result<()> {
    let mut off = offset;
    let end = offset + len;
    // [off, cached_until) was found in the page cache: the worker sends it.
    let mut cached_until = offset;
    let mut since_yield = 0u64;
    let mut again = false;
    // The socket as an I/O thread holds it, made on the first read from the disk.
    let mut socket_for_thread: Option<Arc<OwnedFd>> = None;
    while off < end {
        if off >= cached_until {
            let chunk = (end - off).min(CHUNK);
            if root.pages.worker_may_send(pages) && root.pages.cached(file, pages, off, chunk) {
                cached_until = off + chunk;
            } else {
                let socket = thread_socket(&mut socket_for_thread, stream)?;
                sent.disk_turns += 1;
                match disk::send(socket, root, file, pages, off, chunk, stall).await {
                    Ok(n) => {
                        advance(&mut off, n, sent)?;
                        sent.from_disk += n as u64;
                        again = false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        stream.writable_within(stall, again).await?;
                        again = true;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
        }
        let want = (cached_until - off) as usize;
        let mut at = off as libc::off_t;
        match crate::sys::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut at, want) {
            Ok(n) => {
                advance(&mut off, n, sent)?;
                since_yield += n as u64;
                again = false;
                if since_yield >= FAIR_SHARE {
                    since_yield = 0;
                    stream.writable_within(stall, false).await?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                since_yield = 0;
                stream.writable_within(stall, again).await?;
                again = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as an I/O thread holds it: a duplicate, so that a thread still reading a
/// hung file never sends on a descriptor number the worker closed and reused.
fn thread_socket<'a>(
    slot: &'a mut Option<Arc<OwnedFd>>,
    stream: &Stream,
) -> io::Result<&'a Arc<OwnedFd>> {
    match slot {
        Some(socket) => Ok(socket),
        None => Ok(slot.insert(Arc::new(crate::sys::duplicate(stream.as_raw_fd())?))),
    }
}

/// Appends a small body to `out` if the page cache holds all of it, so it goes out with
/// its head in one send: cheaper than a separate sendfile(2) for a few KiB, and the
/// read that copies it is also the check that it is cached. `false` (and `out` as it
/// was) when any of it is not, or the file is shorter now: [`send_file`] then sends it.
pub fn append_if_cached(file: &File, offset: u64, len: usize, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.resize(start + len, 0);
    let mut done = 0;
    while done < len {
        match crate::sys::read_now(
            file.as_raw_fd(),
            &mut out[start + done..],
            offset + done as u64,
        ) {
            Ok(n) if n > 0 => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    if done < len {
        out.truncate(start);
    }
    done == len
}

/// Moves past `n` bytes sent; 0 means the file ended before the length its stat gave.
fn advance(off: &mut u64, n: usize, sent: &mut Sent) -> io::Result<()> {
    if n == 0 {
        // The file shrank under us: the promised length can no longer be kept.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being sent",
        ));
    }
    *off += n as u64;
    sent.bytes += n as u64;
    Ok(())
}
