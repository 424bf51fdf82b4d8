//! ringsock patch: a provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19): receive
//! buffers the kernel picks from only when data arrives, so a parked RECV holds none.
//!
//! The ring of entries is registered once at its full size (the cap rounded up to a
//! power of two, 16 bytes an entry); the buffers behind it are allocated in chunks as
//! receives find it empty, up to the cap. Every buffer id is at any moment in exactly one
//! place: in the ring (the kernel's), or carried by one completion, which the driver turns
//! either into one `ProvidedBuf` (whose drop gives the id back) or, when nobody awaits
//! that completion, gives back at once.

use std::{
    alloc::{self, Layout},
    cell::{Cell, RefCell},
    io,
    os::unix::io::RawFd,
    ptr::{self, NonNull},
    sync::atomic::{AtomicU16, Ordering},
};

/// The one buffer group of a runtime's ring: nothing else in monoio provides buffers.
pub(crate) const BUF_GROUP: u16 = 0;

/// The largest ring the kernel accepts (and buffer ids are u16).
pub(crate) const MAX_BUFFERS: usize = 1 << 15;

/// Bytes of buffers allocated at a time: few enough that a quiet thread holds little,
/// enough that a burst does not allocate per connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// io_uring_register opcode for a buffer ring's head (Linux 6.8); io-uring 0.6 lacks it.
const IORING_REGISTER_PBUF_STATUS: libc::c_long = 26;

/// `struct io_uring_buf_status`.
#[repr(C)]
struct BufStatus {
    buf_group: u32,
    head: u32,
    resv: [u32; 8],
}

/// `struct io_uring_buf`; the first entry's `resv` is the ring's tail.
#[repr(C)]
struct RawEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

pub(crate) struct BufRing {
    /// The io_uring this ring is registered with, open while `registered`.
    ring_fd: RawFd,
    entries: NonNull<RawEntry>,
    entries_layout: Layout,
    mask: u16,
    /// Our copy of the tail: the kernel only reads it.
    tail: Cell<u16>,
    size: usize,
    max: usize,
    /// Buffers a chunk holds (the last may hold fewer): a power of two, so that finding
    /// a buffer from its id is a shift and a mask.
    chunk_shift: u32,
    chunks: RefCell<Vec<(NonNull<u8>, Layout)>>,
    /// Buffers in all chunks: ids `0..allocated` exist.
    allocated: Cell<usize>,
    /// Cleared when the runtime unregisters the ring: buffers given back afterwards (by
    /// a `ProvidedBuf` that outlived the runtime) are just freed with the ring.
    registered: Cell<bool>,
    /// Debug builds check that no id is given back twice or reported twice.
    #[cfg(debug_assertions)]
    owned_by_kernel: RefCell<Vec<bool>>,
}

impl BufRing {
    /// Registers an empty ring for up to `max` buffers of `size` bytes. `max` and `size`
    /// are checked by the caller (1..=MAX_BUFFERS, 1..=u32::MAX).
    pub(crate) fn register(
        submitter: &io_uring::Submitter<'_>,
        ring_fd: RawFd,
        size: usize,
        max: usize,
    ) -> io::Result<BufRing> {
        let ring_entries = max.next_power_of_two();
        // The kernel wants the ring to start on a page boundary.
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => 4096,
        };
        // Whole pages, so that the pages the kernel pins hold nothing else of ours.
        let bytes = (ring_entries * std::mem::size_of::<RawEntry>()).next_multiple_of(page);
        let entries_layout = Layout::from_size_align(bytes, page)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout's size is at least one 16-byte entry. Zeroed: the tail
        // (inside entry 0) must start at 0.
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?
            .cast::<RawEntry>();
        // SAFETY: `entries` is a page-aligned allocation of `ring_entries` entries that
        // lives until `Drop`, which runs only once the driver unregistered the ring (see
        // `unregister`) or never registered it (the error below).
        let registered = unsafe {
            submitter.register_buf_ring(entries.as_ptr() as u64, ring_entries as u16, BUF_GROUP)
        };
        if let Err(e) = registered {
            // SAFETY: allocated above with this layout, and the kernel refused it.
            unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(e);
        }
        Ok(BufRing {
            ring_fd,
            entries,
            entries_layout,
            mask: (ring_entries - 1) as u16,
            tail: Cell::new(0),
            size,
            max,
            chunk_shift: (CHUNK_BYTES / size).max(1).ilog2(),
            chunks: RefCell::new(Vec::new()),
            allocated: Cell::new(0),
            registered: Cell::new(true),
            #[cfg(debug_assertions)]
            owned_by_kernel: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn allocated(&self) -> usize {
        self.allocated.get()
    }

    /// Buffers in the ring now, from the kernel's own head: what the stats use to show a
    /// buffer taken by a completion and never given back. `None` before Linux 6.8.
    pub(crate) fn in_ring(&self) -> Option<usize> {
        if !self.registered.get() {
            return None;
        }
        let mut status = BufStatus {
            buf_group: BUF_GROUP as u32,
            head: 0,
            resv: [0; 8],
        };
        // SAFETY: io_uring_register(IORING_REGISTER_PBUF_STATUS) reads and writes the one
        // io_uring_buf_status passed, and `ring_fd` is open while the ring is registered.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring_fd,
                IORING_REGISTER_PBUF_STATUS,
                &mut status as *mut BufStatus,
                1,
            )
        };
        (r == 0).then(|| self.tail.get().wrapping_sub(status.head as u16) as usize)
    }

    /// Adds a chunk of buffers to the ring; `false` at the cap or when memory is short.
    pub(crate) fn grow(&self) -> bool {
        if !self.registered.get() {
            return false;
        }
        let first = self.allocated();
        let count = (1 << self.chunk_shift).min(self.max - first);
        if count == 0 {
            return false;
        }
        let Ok(layout) = Layout::from_size_align(count * self.size, 64) else {
            return false;
        };
        // SAFETY: `count` and `size` are at least 1. Left uninitialised: only bytes the
        // kernel reports it wrote are ever read.
        let Some(base) = NonNull::new(unsafe { alloc::alloc(layout) }) else {
            return false;
        };
        self.chunks.borrow_mut().push((base, layout));
        self.allocated.set(first + count);
        #[cfg(debug_assertions)]
        self.owned_by_kernel
            .borrow_mut()
            .resize(first + count, false);
        for i in 0..count {
            // SAFETY: buffer `i` of `count` lies inside the chunk just allocated.
            let buf = unsafe { NonNull::new_unchecked(base.as_ptr().add(i * self.size)) };
            // `first + count <= max <= MAX_BUFFERS`: every id fits in u16.
            self.push((first + i) as u16, buf);
        }
        self.publish();
        true
    }

    /// Where buffer `bid` lives; `None` for an id this ring never handed out.
    pub(crate) fn buf_ptr(&self, bid: u16) -> Option<NonNull<u8>> {
        let bid = bid as usize;
        if bid >= self.allocated.get() {
            return None;
        }
        let chunks = self.chunks.borrow();
        let (base, _) = chunks.get(bid >> self.chunk_shift)?;
        let offset = (bid & ((1 << self.chunk_shift) - 1)) * self.size;
        // SAFETY: every chunk but the last holds 2^chunk_shift buffers and the last the
        // rest of `allocated`, so buffer `bid` lies inside this chunk's allocation.
        Some(unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) })
    }

    /// A completion carried buffer `bid`: the kernel has taken it out of the ring.
    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    pub(crate) fn taken(&self, bid: u16) {
        #[cfg(debug_assertions)]
        if let Some(owned) = self.owned_by_kernel.borrow_mut().get_mut(bid as usize) {
            assert!(*owned, "buffer {bid} reported twice by the kernel");
            *owned = false;
        }
    }

    /// Puts buffer `bid`, at `buf`, back in the ring for the kernel to fill again.
    pub(crate) fn give_back(&self, bid: u16, buf: NonNull<u8>) {
        if self.registered.get() {
            self.push(bid, buf);
            self.publish();
        }
    }

    /// `buf` is buffer `bid` of this ring (from `buf_ptr`, or as `grow` lays them out).
    fn push(&self, bid: u16, buf: NonNull<u8>) {
        debug_assert_eq!(self.buf_ptr(bid), Some(buf));
        #[cfg(debug_assertions)]
        if let Some(owned) = self.owned_by_kernel.borrow_mut().get_mut(bid as usize) {
            assert!(!*owned, "buffer {bid} given back twice");
            *owned = true;
        }
        let tail = self.tail.get();
        // SAFETY: `tail & mask` indexes the ring's allocation. The kernel reads an entry
        // only once the published tail passes it, and never writes entries; the fields are
        // written one by one so that entry 0's `resv`, the tail the kernel reads, is not.
        unsafe {
            let entry = self.entries.as_ptr().add((tail & self.mask) as usize);
            ptr::addr_of_mut!((*entry).addr).write(buf.as_ptr() as u64);
            ptr::addr_of_mut!((*entry).len).write(self.size as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        // u16 wraps at a multiple of the ring's size, as the kernel's head does.
        self.tail.set(tail.wrapping_add(1));
    }

    /// Lets the kernel see every entry pushed so far.
    fn publish(&self) {
        // SAFETY: entry 0's `resv` is the ring's tail, a naturally aligned u16 in our
        // allocation that only we write; the kernel reads it with an acquire load, which
        // this release store pairs with so it also sees the entries written before.
        let tail = unsafe { &*(ptr::addr_of!((*self.entries.as_ptr()).resv) as *const AtomicU16) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// Called by the driver before its ring closes: the kernel stops picking buffers
    /// from here, so their memory may go whenever the last `ProvidedBuf` does.
    pub(crate) fn unregister(&self, submitter: &io_uring::Submitter<'_>) {
        if self.registered.replace(false) {
            let _ = submitter.unregister_buf_ring(BUF_GROUP);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The driver holds the pool until it has unregistered the ring, so this is not
        // expected; were the kernel still able to pick these buffers, leaking them is
        // the safe way out.
        if self.registered.get() {
            return;
        }
        for (base, layout) in self.chunks.get_mut().drain(..) {
            // SAFETY: allocated in `grow` with this layout; the kernel no longer picks
            // from the ring, and no `ProvidedBuf` is left (each holds the pool).
            unsafe { alloc::dealloc(base.as_ptr(), layout) };
        }
        // SAFETY: allocated in `register` with this layout and unregistered since.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout) };
    }
}
