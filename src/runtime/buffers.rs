//! Each worker's receive buffers, kept apart from the rest of its memory. A connection
//! holds one while it is busy and gives it back when it goes quiet (`runtime::park`); but
//! a buffer freed to malloc leaves a hole between the other allocations its connection
//! made, and no page comes free: 4,000 quiet connections freed 8 MB of buffers and the
//! process shrank by nothing. Here buffers are slots in 64 KiB chunks of their own, and a
//! chunk whose every slot is back is freed whole, which malloc can give back.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;

/// Bytes per chunk: 16 slots of 4 KiB (serve) or 32 of 2 KiB (proxy).
const CHUNK: usize = 64 * 1024;

/// Empty chunks kept for reuse; past these, an emptied chunk is freed.
const EMPTY_KEPT: usize = 1;

/// One worker's pool of receive buffers of one size. Cheap to clone (one `Rc`).
#[derive(Clone)]
pub struct RecvBuffers {
    inner: Rc<Inner>,
}

struct Inner {
    slot: usize,
    chunks: RefCell<Chunks>,
}

#[derive(Default)]
struct Chunks {
    /// Freed chunks leave `None`, reused by the next chunk made.
    list: Vec<Option<Chunk>>,
    /// Free slots, the most recently freed last (warm in the cache).
    free: Vec<(u32, u16)>,
    /// Chunks with every slot free.
    empty: usize,
}

struct Chunk {
    memory: Box<[u8]>,
    used: usize,
}

/// A receive buffer from a [`RecvBuffers`] pool, given back when dropped; monoio's ops
/// take it by value as they take a `Vec<u8>`.
pub struct RecvBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    chunk: u32,
    slot: u16,
    pool: Rc<Inner>,
}

impl RecvBuffers {
    /// A pool of buffers of `slot` bytes (a power of two up to the chunk's size).
    pub fn new(slot: usize) -> RecvBuffers {
        assert!(
            slot.is_power_of_two() && slot <= CHUNK,
            "slot of {slot} bytes"
        );
        RecvBuffers {
            inner: Rc::new(Inner {
                slot,
                chunks: RefCell::default(),
            }),
        }
    }

    /// An empty buffer of the pool's size.
    pub fn take(&self) -> RecvBuf {
        let inner = &self.inner;
        let mut chunks = inner.chunks.borrow_mut();
        let (chunk, slot) = match chunks.free.pop() {
            Some(free) => free,
            None => chunks.grow(inner.slot),
        };
        let entry = chunks.list[chunk as usize]
            .as_mut()
            .expect("a free slot's chunk is alive: freeing a chunk drops its slots");
        entry.used += 1;
        if entry.used == 1 {
            chunks.empty -= 1;
        }
        let entry = chunks.list[chunk as usize]
            .as_mut()
            .expect("alive, as above");
        // SAFETY: the slot lies within the chunk (slot < CHUNK / size), and the chunk's
        // memory is a boxed slice that never moves while the chunk is alive, which it is
        // while this buffer holds a slot of it (`used` > 0).
        let ptr = unsafe { entry.memory.as_mut_ptr().add(slot as usize * inner.slot) };
        RecvBuf {
            ptr: NonNull::new(ptr).expect("a boxed slice is not null"),
            len: 0,
            cap: inner.slot,
            chunk,
            slot,
            pool: inner.clone(),
        }
    }

    /// Chunks allocated now, for tests and metrics.
    pub fn chunks(&self) -> usize {
        self.inner.chunks.borrow().list.iter().flatten().count()
    }
}

impl Chunks {
    /// Makes a chunk and returns its first slot; the others go on the free list.
    fn grow(&mut self, slot: usize) -> (u32, u16) {
        let chunk = Chunk {
            memory: vec![0u8; CHUNK].into_boxed_slice(),
            used: 0,
        };
        let index = match self.list.iter().position(Option::is_none) {
            Some(hole) => {
                self.list[hole] = Some(chunk);
                hole
            }
            None => {
                self.list.push(Some(chunk));
                self.list.len() - 1
            }
        } as u32;
        self.empty += 1;
        let slots = (CHUNK / slot) as u16;
        // Highest first, so that slot 0 is taken next and the chunk fills from the front.
        self.free.extend((1..slots).rev().map(|s| (index, s)));
        (index, 0)
    }

    fn give_back(&mut self, chunk: u32, slot: u16) {
        let Some(entry) = self.list[chunk as usize].as_mut() else {
            return;
        };
        entry.used -= 1;
        self.free.push((chunk, slot));
        if entry.used == 0 {
            self.empty += 1;
            if self.empty > EMPTY_KEPT {
                // Every slot is back: the chunk goes, and its slots with it.
                self.list[chunk as usize] = None;
                self.empty -= 1;
                self.free.retain(|&(c, _)| c != chunk);
            }
        }
    }
}

impl RecvBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot's size: the most it holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes received, writable (a parser may rewrite in place).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.filled_mut().copy_within(n.., 0);
        self.len -= n;
    }

    /// Appends what fits of `bytes`; returns how many did.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.cap - self.len);
        // SAFETY: `n` bytes fit after `len` within the slot, and `bytes` is another
        // allocation (a shared borrow cannot alias this buffer, held mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(self.len), n);
        }
        self.len += n;
        n
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes from `ptr` were written (set_init) and lie in the slot.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool
            .chunks
            .borrow_mut()
            .give_back(self.chunk, self.slot);
    }
}

// SAFETY: the pointer stays valid and unmoved while the buffer lives (its chunk is freed
// only once every slot is back), and `bytes_init` never exceeds what was written.
unsafe impl monoio::buf::IoBuf for RecvBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: as for IoBuf; `bytes_total` is the slot's size.
unsafe impl monoio::buf::IoBufMut for RecvBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.cap
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.len = pos.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_whose_slots_all_came_back_is_freed() {
        let pool = RecvBuffers::new(2048);
        let mut held: Vec<RecvBuf> = (0..96).map(|_| pool.take()).collect();
        assert_eq!(pool.chunks(), 3, "32 slots a chunk");
        // Slots never overlap.
        let mut starts: Vec<usize> = held.iter().map(|b| b.ptr.as_ptr() as usize).collect();
        starts.sort_unstable();
        assert!(starts.windows(2).all(|w| w[1] - w[0] >= 2048));
        held.truncate(32);
        assert_eq!(
            pool.chunks(),
            2,
            "one emptied chunk is kept, the other freed"
        );
        drop(held);
        assert_eq!(pool.chunks(), 1);
        let again = pool.take();
        assert_eq!(pool.chunks(), 1, "the kept chunk is used again");
        drop(again);
    }

    #[test]
    fn data_written_is_read_back() {
        use monoio::buf::{IoBuf, IoBufMut};
        let pool = RecvBuffers::new(4096);
        let mut buf = pool.take();
        assert_eq!(buf.bytes_total(), 4096);
        // SAFETY: writing 5 bytes into a 4,096-byte slot, then marking them written.
        unsafe {
            std::ptr::copy_nonoverlapping(b"hello".as_ptr(), buf.write_ptr(), 5);
            buf.set_init(5);
        }
        assert_eq!(&buf[..], b"hello");
        assert_eq!(buf.bytes_init(), 5);
    }
}
