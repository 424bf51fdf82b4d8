//! Moves one direction of a proxied connection, socket to socket, until EOF.
//!
//! Small messages are copied through a per-worker scratch buffer with recv/send; once a
//! read fills that buffer the stream is bulk and moves socket → pipe → socket with
//! splice(2), zero-copy, until a burst comes up short again. splice costs more than a
//! copy for a 64-byte request (pipe buffers, page references), and a copy of a full
//! pipe's worth costs more than splice: HAProxy's `splice-auto` makes the same choice.
//!
//! Readiness comes from the runtime (io_uring POLL_ADD, or epoll); the data calls are
//! non-blocking syscalls made right here. io_uring's own SPLICE op is always punted to a
//! kernel worker thread that then sleeps on the socket, so 2,000 idle connections would
//! pin 4,000 `iou-wrk` threads; waiting for readiness first pins none.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::pipe::{Pipe, PipePool};
use crate::net::Stream;

/// Size of the per-worker copy buffer; a read that fills it switches to splice.
pub const SCRATCH_SIZE: usize = 16 * 1024;

/// Per-worker state the pumps share: the pipe pool and the copy buffer. Only borrowed
/// between two syscalls, never across an await.
pub struct PumpContext {
    pub pipes: PipePool,
    scratch: RefCell<Box<[u8]>>,
}

impl PumpContext {
    pub fn new(pipes: PipePool) -> PumpContext {
        PumpContext {
            pipes,
            scratch: RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice()),
        }
    }
}

/// What one burst of reading did.
enum Burst {
    /// The source sent EOF and every byte before it was delivered.
    Eof,
    /// Moved this many bytes and the source had no more for now.
    Moved(usize),
}

/// Copies `src` to `dst` until EOF, then half-closes `dst`: `Ok` means every byte before
/// the EOF was delivered and the destination was sent FIN.
///
/// Errors are either side failing (reset, broken pipe) or running out of fds for a
/// pipe; the caller tears the whole connection down.
pub async fn pump(src: &Stream, dst: &Stream, ctx: &PumpContext) -> io::Result<()> {
    let mut splicing = false;
    loop {
        src.readable().await?;
        let burst = if splicing {
            splice_burst(src, dst, &ctx.pipes).await?
        } else {
            copy_burst(src, dst, ctx).await?
        };
        match burst {
            Burst::Eof => {
                dst.shutdown_write()?;
                return Ok(());
            }
            Burst::Moved(n) => splicing = n >= SCRATCH_SIZE,
        }
    }
}

/// One recv into the scratch buffer and its delivery.
async fn copy_burst(src: &Stream, dst: &Stream, ctx: &PumpContext) -> io::Result<Burst> {
    let leftover = {
        let mut scratch = ctx.scratch.borrow_mut();
        let n = match recv(src.as_raw_fd(), &mut scratch) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Moved(0)),
            Err(e) => return Err(e),
        };
        let sent = match send(dst.as_raw_fd(), &scratch[..n]) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent == n {
            return Ok(Burst::Moved(n));
        }
        // The destination is full: keep the rest (the scratch buffer is shared).
        (scratch[sent..n].to_vec(), n)
    };
    let (rest, n) = leftover;
    let mut rest = &rest[..];
    while !rest.is_empty() {
        dst.writable().await?;
        match send(dst.as_raw_fd(), rest) {
            Ok(sent) => rest = &rest[sent..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Burst::Moved(n))
}

/// Splices until the source has nothing more for now, through a pipe held only for the
/// burst: an idle connection holds no pipe.
async fn splice_burst(src: &Stream, dst: &Stream, pipes: &PipePool) -> io::Result<Burst> {
    let pipe = pipes.get()?;
    let burst = splice_through(src, dst, &pipe).await?;
    // Only an empty pipe may be reused (on error it may still hold bytes: it is closed).
    pipes.put(pipe);
    Ok(burst)
}

async fn splice_through(src: &Stream, dst: &Stream, pipe: &Pipe) -> io::Result<Burst> {
    let capacity = pipe.capacity();
    let mut moved = 0;
    loop {
        let room = capacity;
        let (n, eof) = match splice(src.as_raw_fd(), pipe.write_fd(), room) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
            Err(e) => return Err(e),
        };
        let mut in_pipe = n;
        while in_pipe > 0 {
            match splice(pipe.read_fd(), dst.as_raw_fd(), in_pipe) {
                Ok(sent) => in_pipe -= sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
        moved += n;
        if eof {
            return Ok(Burst::Eof);
        }
        // A short read means the socket is drained for now (or the pipe ran out of
        // slots: then the next readiness check returns at once).
        if n < room {
            return Ok(Burst::Moved(moved));
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

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length. MSG_NOSIGNAL: a closed peer is an
    // EPIPE error here, not a process-killing SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
