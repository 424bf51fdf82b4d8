//! A connection's request bytes read and not yet answered: in a buffer of the worker's
//! pool while they fit (a request head is rarely over 4 KiB), on the heap past that (up to
//! [`MAX_HEAD`]), and nowhere while the connection is quiet, so an idle keep-alive
//! connection holds no buffer.

use monoio::buf::{IoBuf, IoBufMut};

use super::request::MAX_HEAD;
use crate::runtime::buffers::{RecvBuf, RecvBuffers};

pub enum Input {
    /// Quiet: nothing read, no buffer held.
    Empty,
    Pooled(RecvBuf),
    /// A head that outgrew the pool's buffer.
    Heap(Vec<u8>),
}

impl Input {
    pub fn len(&self) -> usize {
        match self {
            Input::Empty => 0,
            Input::Pooled(buf) => buf.len(),
            Input::Heap(buf) => buf.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Empty => &[],
            Input::Pooled(buf) => buf,
            Input::Heap(buf) => buf,
        }
    }

    /// The bytes read, for parsing (which may rewrite a version digit in place).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Input::Empty => &mut [],
            Input::Pooled(buf) => buf.filled_mut(),
            Input::Heap(buf) => buf,
        }
    }

    /// Drops the first `answered` bytes, keeping the unanswered rest at the front; gives
    /// the buffer back once nothing is left.
    pub fn consume(&mut self, answered: usize) {
        match self {
            Input::Empty => {}
            Input::Pooled(buf) => buf.consume(answered),
            Input::Heap(buf) => {
                buf.copy_within(answered.., 0);
                buf.truncate(buf.len() - answered);
            }
        }
        if self.is_empty() {
            *self = Input::Empty;
        }
    }

    /// A buffer to receive more into, with what was read so far at its front and room
    /// after it: the pool's while it has room, else the heap's, grown to [`MAX_HEAD`].
    pub fn take_for_read(&mut self, pool: &RecvBuffers) -> ReadBuf {
        match std::mem::replace(self, Input::Empty) {
            Input::Empty => ReadBuf::Pooled(pool.take()),
            Input::Pooled(buf) if buf.len() < buf.capacity() => ReadBuf::Pooled(buf),
            Input::Pooled(buf) => {
                let mut heap = Vec::with_capacity(MAX_HEAD);
                heap.extend_from_slice(&buf);
                ReadBuf::Heap(heap)
            }
            Input::Heap(buf) => ReadBuf::Heap(buf),
        }
    }

    /// Takes back a buffer that received more (or nothing, on an error).
    pub fn put_back(&mut self, buf: ReadBuf) {
        *self = match buf {
            ReadBuf::Pooled(buf) if buf.is_empty() => Input::Empty,
            ReadBuf::Pooled(buf) => Input::Pooled(buf),
            ReadBuf::Heap(buf) => Input::Heap(buf),
        };
    }
}

/// What a receive appends to: the bytes so far, then room.
pub enum ReadBuf {
    Pooled(RecvBuf),
    Heap(Vec<u8>),
}

// SAFETY: both kinds keep their memory in place while lent to a receive, which writes
// only past what was already read (`write_ptr` points there, `bytes_total` is the room
// left) and `set_init` then counts the bytes it added.
unsafe impl IoBufMut for ReadBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        match self {
            // SAFETY (both): `len` is within the buffer's capacity.
            ReadBuf::Pooled(buf) => unsafe { buf.write_ptr().add(buf.len()) },
            ReadBuf::Heap(buf) => unsafe { buf.as_mut_ptr().add(buf.len()) },
        }
    }

    fn bytes_total(&mut self) -> usize {
        match self {
            ReadBuf::Pooled(buf) => buf.bytes_total() - buf.len(),
            ReadBuf::Heap(buf) => buf.capacity() - buf.len(),
        }
    }

    unsafe fn set_init(&mut self, added: usize) {
        match self {
            ReadBuf::Pooled(buf) => buf.set_init(buf.len() + added),
            // SAFETY: the receive wrote `added` bytes after the `len` already there.
            ReadBuf::Heap(buf) => buf.set_len(buf.len() + added),
        }
    }
}

// SAFETY: read-only views of the same memory.
unsafe impl IoBuf for ReadBuf {
    fn read_ptr(&self) -> *const u8 {
        match self {
            ReadBuf::Pooled(buf) => buf.read_ptr(),
            ReadBuf::Heap(buf) => buf.as_ptr(),
        }
    }

    fn bytes_init(&self) -> usize {
        match self {
            ReadBuf::Pooled(buf) => buf.len(),
            ReadBuf::Heap(buf) => buf.len(),
        }
    }
}
