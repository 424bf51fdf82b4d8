//! Moves one direction of a proxied connection, socket to socket, until EOF.
//!
//! Small messages go through the runtime's own receive and a send: on io_uring a RECV
//! parked on the socket completes with the data, with no readiness round trip and no
//! extra syscall. Once a receive fills its buffer the stream is bulk and moves
//! socket → pipe → socket with splice(2), zero-copy, until a burst comes up short
//! again. splice costs more than a copy for a 64-byte request (pipe buffers, page
//! references) and less for a pipe's worth: HAProxy's `splice-auto` makes the same call.
//!
//! The splices are non-blocking syscalls issued on readiness (io_uring POLL_ADD, or
//! epoll). io_uring's own SPLICE op is always punted to a kernel worker thread that then
//! sleeps on the socket, so 2,000 idle connections would pin 4,000 `iou-wrk` threads;
//! waiting for readiness first pins none.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::pipe::{Pipe, PipePool};
use crate::net::{Duplex, Stream};

/// Receive buffer per direction, held for the connection's life (a parked RECV owns it).
/// Small on purpose: 2,000 idle connections cost 8 MiB of it. A receive that fills it
/// switches the direction to splice.
pub const RECV_SIZE: usize = 2 * 1024;

/// A splice burst shorter than this ends bulk mode: the stream is back to messages.
const BULK_BURST: usize = 16 * 1024;

/// Why a direction stopped short of EOF: which of its two sockets failed. A read error
/// means the source is gone (reset); a write error only that the destination stopped
/// taking bytes, while it may still have bytes for the other direction.
#[derive(Debug)]
pub enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// What one burst of splicing did.
enum Burst {
    /// The source sent EOF and every byte before it was delivered.
    Eof,
    /// Moved this many bytes and the source had no more for now.
    Moved(usize),
}

/// Copies `src` to `dst` until EOF, then half-closes `dst`: `Ok` means every byte before
/// the EOF was delivered and the destination was sent FIN.
///
/// A failure names the side that failed; the caller decides what the other direction
/// may still do (see `forward`).
pub async fn pump(src: &Duplex, dst: &Duplex, pipes: &PipePool) -> Result<(), Failure> {
    let mut buf = Vec::with_capacity(RECV_SIZE);
    loop {
        let (received, returned) = src.recv(buf).await;
        let n = received.map_err(Failure::Read)?;
        if n == 0 {
            break;
        }
        let (sent, mut returned) = dst.send_all(returned).await;
        sent.map_err(Failure::Write)?;
        returned.clear();
        buf = returned;
        if n == RECV_SIZE {
            if let Burst::Eof = splice_while_bulk(src.stream(), dst.stream(), pipes).await? {
                break;
            }
        }
    }
    // Everything before the EOF is delivered: now pass the EOF on.
    dst.stream().shutdown_write().map_err(Failure::Write)
}

/// Splices burst after burst while the bursts stay large.
async fn splice_while_bulk(src: &Stream, dst: &Stream, pipes: &PipePool) -> Result<Burst, Failure> {
    loop {
        match splice_burst(src, dst, pipes).await? {
            Burst::Moved(n) if n >= BULK_BURST => src.readable().await.map_err(Failure::Read)?,
            burst => return Ok(burst),
        }
    }
}

/// Splices until the source has nothing more for now, through a pipe held only for the
/// burst: an idle connection holds no pipe.
async fn splice_burst(src: &Stream, dst: &Stream, pipes: &PipePool) -> Result<Burst, Failure> {
    let pipe = match pipes.get() {
        Ok(pipe) => pipe,
        // Out of fds (or pipe memory): this connection need not die for it; it goes on
        // copying through its receive buffer until a pipe can be had again.
        Err(e) => {
            crate::debug!("no pipe for splicing ({e}); copying instead");
            return Ok(Burst::Moved(0));
        }
    };
    let burst = splice_through(src, dst, &pipe).await?;
    // Only an empty pipe may be reused (on error it may still hold bytes: it is closed).
    pipes.put(pipe);
    Ok(burst)
}

async fn splice_through(src: &Stream, dst: &Stream, pipe: &Pipe) -> Result<Burst, Failure> {
    let capacity = pipe.capacity();
    let mut moved = 0;
    loop {
        // The pipe is empty here: each read is drained before the next.
        let (n, eof) = match splice(src.as_raw_fd(), pipe.write_fd(), capacity) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
            Err(e) => return Err(Failure::Read(e)),
        };
        let mut in_pipe = n;
        while in_pipe > 0 {
            match splice(pipe.read_fd(), dst.as_raw_fd(), in_pipe) {
                Ok(sent) => in_pipe -= sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable().await.map_err(Failure::Write)?
                }
                Err(e) => return Err(Failure::Write(e)),
            }
        }
        moved += n;
        if eof {
            return Ok(Burst::Eof);
        }
        // A short read means the socket is drained for now (or the pipe ran out of
        // slots: then the next readiness check returns at once).
        if n < capacity {
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
