//! Moves one direction of a proxied connection: socket → pipe → socket with splice(2).
//!
//! Readiness comes from the runtime (io_uring POLL_ADD, or epoll); the splices themselves
//! are non-blocking syscalls made right here. io_uring's own SPLICE op is always punted
//! to a kernel worker thread that then sleeps on the socket, so 2,000 idle connections
//! would pin 4,000 `iou-wrk` threads; waiting for readiness first pins none.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::pipe::{Pipe, PipePool};
use crate::net::Stream;

/// Upper bound for one splice: the pipe's size is the real limit.
const MAX_SPLICE: usize = 1 << 20;

/// Copies `src` to `dst` until EOF, then half-closes `dst`: `Ok` means every byte before
/// the EOF was delivered and the destination was sent FIN.
///
/// Errors are either side failing (reset, broken pipe) or running out of fds for a
/// pipe; the caller tears the whole connection down.
pub async fn pump(src: &Stream, dst: &Stream, pool: &PipePool) -> io::Result<()> {
    let mut held: Option<Pipe> = None;
    let result = pump_with(src, dst, pool, &mut held).await;
    // Only an empty pipe may go back to the pool; one with bytes left in it (the
    // destination failed) is closed with the connection.
    if let (Ok(_), Some(pipe)) = (&result, held) {
        pool.put(pipe);
    }
    result
}

async fn pump_with(
    src: &Stream,
    dst: &Stream,
    pool: &PipePool,
    held: &mut Option<Pipe>,
) -> io::Result<()> {
    loop {
        // Wait for data without holding a pipe.
        src.readable().await?;
        let pipe = match held {
            Some(pipe) => pipe,
            None => held.insert(pool.get()?),
        };
        let capacity = pipe.capacity().min(MAX_SPLICE);
        let mut in_pipe = 0usize;
        let mut eof = false;
        loop {
            // Fill: a short read means the socket is drained for now.
            let mut drained = false;
            if !eof && in_pipe < capacity {
                let want = capacity - in_pipe;
                match splice(src.as_raw_fd(), pipe.write_fd(), want) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        in_pipe += n;
                        drained = n < want;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                    Err(e) => return Err(e),
                }
            }
            // Empty the pipe into the destination, waiting while it is full.
            while in_pipe > 0 {
                match splice(pipe.read_fd(), dst.as_raw_fd(), in_pipe) {
                    Ok(n) => in_pipe -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            if eof {
                // Everything before the EOF is delivered: now pass the EOF on.
                dst.shutdown_write()?;
                return Ok(());
            }
            if drained {
                break;
            }
        }
        // Idle: give the (empty) pipe back while waiting for the next bytes.
        if let Some(pipe) = held.take() {
            pool.put(pipe);
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets mean "use the
    // file position", which sockets and pipes do not have.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
