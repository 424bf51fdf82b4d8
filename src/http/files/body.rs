//! File bodies: sendfile(2) on the non-blocking socket whenever the runtime reports it
//! writable. io_uring's SPLICE op is not used: the kernel punts it to a worker thread
//! that then sleeps on the socket, one per slow client.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::net::Stream;

/// Largest single sendfile(2): Linux caps one call just below 2 GiB anyway.
const MAX_SENDFILE: u64 = 0x7fff_f000;
/// Bytes sent in a row before letting the worker's other connections run: a fast
/// client with a huge socket buffer must not monopolise the thread.
const FAIR_SHARE: u64 = 4 << 20;

/// Sends `len` bytes of `file` from `offset` with sendfile(2), waiting for write
/// readiness whenever the socket buffer is full. A client that stops reading parks
/// only this task, and is dropped after `stall` without progress. `sent` counts what
/// went out, also when it fails midway.
pub async fn send_file(
    stream: &Stream,
    file: &File,
    offset: u64,
    len: u64,
    stall: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let mut off = offset as libc::off_t;
    let end = offset + len;
    let mut since_yield = 0u64;
    let mut again = false;
    while (off as u64) < end {
        let want = (end - off as u64).min(MAX_SENDFILE) as usize;
        match crate::sys::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, want) {
            Ok(0) => {
                // The file shrank under us: the promised length can no longer be kept.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ));
            }
            Ok(n) => {
                *sent += n as u64;
                since_yield += n as u64;
                again = false;
                if since_yield >= FAIR_SHARE {
                    since_yield = 0;
                    crate::http::writable_within(stream, stall, false).await?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                since_yield = 0;
                crate::http::writable_within(stream, stall, again).await?;
                again = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
