//! Moving a body from one side of an exchange to the other: the bytes already read
//! first, then the socket. A body known to be large moves socket → pipe → socket with
//! splice(2), exactly as many bytes as it has, so nothing past its end is taken; a
//! chunked one is decoded, its data passed on (spliced too, chunk by large chunk) and its
//! framing written anew. Which side failed is kept: a backend cut mid-answer must reach
//! the client as a cut, a client gone mid-upload must not.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::chunked::{self, Chunked, Step};
use crate::http::input::Input;
use crate::net::Stream;
use crate::proxy::{Pipe, PipePool};
use crate::runtime::buffers::RecvBuffers;
use crate::sys;

/// A body with at least this much left goes by splice: below it, a copy through the
/// buffer costs less than the pipe's page references (the proxy's pump draws the same
/// line).
const SPLICE_AT: u64 = 64 * 1024;
/// Framing and small chunks are gathered up to this much before a send.
const GATHER: usize = 16 * 1024;

/// Why a body did not get across.
#[derive(Debug)]
pub enum Cut {
    /// The sending side closed, reset or stalled before the body ended.
    Source(io::Error),
    /// The receiving side failed to take it.
    Destination(io::Error),
    /// Chunked framing that cannot be trusted.
    Malformed(&'static str),
    /// More chunked data than the limit allows.
    TooLarge,
}

/// One side of an exchange as read: bytes received and not yet used, then its socket.
pub struct Reader<'a> {
    pub stream: &'a mut Stream,
    input: &'a mut Input,
    /// Where the unused bytes in `input` start.
    at: usize,
    buffers: &'a RecvBuffers,
    /// How long a read may wait for bytes before the side is given up on.
    pub stall: Duration,
}

impl<'a> Reader<'a> {
    pub fn new(
        stream: &'a mut Stream,
        input: &'a mut Input,
        at: usize,
        buffers: &'a RecvBuffers,
        stall: Duration,
    ) -> Reader<'a> {
        Reader {
            stream,
            input,
            at,
            buffers,
            stall,
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.input.bytes()[self.at..]
    }

    pub fn used(&mut self, n: usize) {
        self.at += n;
    }

    /// Where the unused bytes start in the input, for its owner to go on from.
    pub fn at(&self) -> usize {
        self.at
    }

    /// Reads more after the unused bytes (the used ones are dropped first); `Ok(0)` at
    /// EOF, `TimedOut` after `stall` without a byte.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.at > 0 {
            self.input.consume(self.at);
            self.at = 0;
        }
        let buf = self.input.take_for_read(self.buffers);
        monoio::select! {
            (result, buf) = self.stream.recv(buf) => {
                self.input.put_back(buf);
                result
            },
            _ = monoio::time::sleep(self.stall) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing arrived within the timeout",
            )),
        }
    }

    /// Whether every byte read has been used.
    pub fn is_drained(&self) -> bool {
        self.buffered().is_empty()
    }
}

/// Where a body goes: the socket, how long it may refuse bytes, and the pipes to splice
/// through.
pub struct Writer<'a> {
    pub stream: &'a Stream,
    pub stall: Duration,
    pub pipes: &'a PipePool,
}

impl Writer<'_> {
    async fn write(&self, data: &[u8], more: bool) -> Result<(), Cut> {
        let mut sent = 0;
        self.stream
            .write_all_within(data, more, self.stall, &mut sent)
            .await
            .map_err(Cut::Destination)
    }
}

/// Moves exactly `len` bytes of body from `src` to `dst`.
pub async fn copy_length(src: &mut Reader<'_>, dst: &Writer<'_>, len: u64) -> Result<(), Cut> {
    let mut left = len;
    loop {
        let take = (left.min(src.buffered().len() as u64)) as usize;
        if take > 0 {
            dst.write(&src.buffered()[..take], left > take as u64)
                .await?;
            src.used(take);
            left -= take as u64;
        }
        if left == 0 {
            return Ok(());
        }
        if left >= SPLICE_AT {
            let moved = splice_exact(src, dst, left).await?;
            left -= moved;
            if moved > 0 {
                continue;
            }
        }
        read_some(src).await?;
    }
}

/// Moves what `src` sends until it closes: an answer framed by its end.
pub async fn copy_until_close(src: &mut Reader<'_>, dst: &Writer<'_>) -> Result<u64, Cut> {
    let mut moved = 0;
    loop {
        let n = src.buffered().len();
        if n > 0 {
            dst.write(src.buffered(), false).await?;
            src.used(n);
            moved += n as u64;
        }
        match src.read_more().await {
            Ok(0) => return Ok(moved),
            Ok(_) => {}
            Err(e) => return Err(Cut::Source(e)),
        }
    }
}

/// Relays a chunked body: its data passed on, its framing written anew (chunk-size
/// lines without extensions, no trailers), or none at all with `dechunk` (for an
/// HTTP/1.0 client, whose answer then ends with the connection). Returns the data
/// length; more than `max` is [`Cut::TooLarge`].
pub async fn relay_chunked(
    src: &mut Reader<'_>,
    dst: &Writer<'_>,
    max: u64,
    dechunk: bool,
) -> Result<u64, Cut> {
    let mut chunked = Chunked::default();
    let mut gathered = Vec::new();
    let mut data = 0u64;
    loop {
        if src.is_drained() {
            dst.write(&gathered, true).await?;
            gathered.clear();
            if chunked.data_left() >= SPLICE_AT {
                let moved = splice_exact(src, dst, chunked.data_left()).await?;
                chunked.passed(moved);
                if moved > 0 {
                    end_of_data(&chunked, dechunk, &mut gathered);
                    continue;
                }
            }
            read_some(src).await?;
        }
        match chunked
            .step(src.buffered())
            .map_err(|m| Cut::Malformed(m.0))?
        {
            Step::ChunkStart { consumed, size } => {
                src.used(consumed);
                data = data.saturating_add(size);
                if data > max {
                    return Err(Cut::TooLarge);
                }
                if !dechunk {
                    match size {
                        0 => gathered.extend_from_slice(chunked::LAST_CHUNK),
                        size => chunked::size_line(size, &mut gathered),
                    }
                }
            }
            Step::Data { len } => {
                gathered.extend_from_slice(&src.buffered()[..len]);
                src.used(len);
                end_of_data(&chunked, dechunk, &mut gathered);
            }
            Step::Framing { consumed } => src.used(consumed),
            Step::Done { consumed } => {
                src.used(consumed);
                dst.write(&gathered, false).await?;
                return Ok(data);
            }
        }
        if gathered.len() >= GATHER {
            dst.write(&gathered, true).await?;
            gathered.clear();
        }
    }
}

/// After a chunk's last data byte: the CR LF that ends it.
fn end_of_data(chunked: &Chunked, dechunk: bool, gathered: &mut Vec<u8>) {
    if chunked.data_left() == 0 && !dechunk {
        gathered.extend_from_slice(chunked::DATA_END);
    }
}

/// Reads more into `src`; EOF before the body ended is a cut.
async fn read_some(src: &mut Reader<'_>) -> Result<(), Cut> {
    match src.read_more().await {
        Ok(0) => Err(Cut::Source(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the end of the body",
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(Cut::Source(e)),
    }
}

/// Splices up to `left` bytes from `src`'s socket (nothing may be buffered) to `dst`, a
/// pipe's worth at a time; returns how many moved, 0 if no pipe could be had (the
/// caller copies instead).
async fn splice_exact(src: &mut Reader<'_>, dst: &Writer<'_>, left: u64) -> Result<u64, Cut> {
    debug_assert!(src.is_drained());
    let mut moved = 0;
    while moved < left {
        let Some(pipe) = dst.pipes.get() else {
            return Ok(moved);
        };
        let want = (left - moved).min(pipe.capacity() as u64) as usize;
        let n = match sys::splice(src.stream.as_raw_fd(), pipe.write_fd(), want) {
            Ok(0) => {
                dst.pipes.put(pipe);
                return Err(Cut::Source(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.pipes.put(pipe);
                readable_within(src.stream, src.stall).await?;
                continue;
            }
            Err(e) => {
                dst.pipes.put(pipe);
                return Err(Cut::Source(e));
            }
        };
        // On error the pipe may hold bytes: it is closed, never reused.
        empty_into(&pipe, n, dst).await?;
        dst.pipes.put(pipe);
        moved += n as u64;
    }
    Ok(moved)
}

/// Splices the `n` bytes in `pipe` into `dst`, waiting for room as long as it takes.
async fn empty_into(pipe: &Pipe, n: usize, dst: &Writer<'_>) -> Result<(), Cut> {
    let mut in_pipe = n;
    let mut again = false;
    while in_pipe > 0 {
        match sys::splice(pipe.read_fd(), dst.stream.as_raw_fd(), in_pipe) {
            Ok(sent) => {
                in_pipe -= sent;
                again = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.stream
                    .writable_within(dst.stall, again)
                    .await
                    .map_err(Cut::Destination)?;
                again = true;
            }
            Err(e) => return Err(Cut::Destination(e)),
        }
    }
    Ok(())
}

async fn readable_within(stream: &Stream, stall: Duration) -> Result<(), Cut> {
    monoio::select! {
        ready = stream.readable() => ready.map_err(Cut::Source),
        _ = monoio::time::sleep(stall) => Err(Cut::Source(io::Error::new(
            io::ErrorKind::TimedOut,
            "nothing arrived within the timeout",
        ))),
    }
}
