//! ringsock patch: receive buffers that exist only while data moves.
//!
//! `TcpStream::recv_provided` / `UnixStream::recv_provided` wait for data with no buffer
//! of their own and return a [`ProvidedBuf`] taken from this runtime's pool when data
//! arrives: on io_uring one RECV with IOSQE_BUFFER_SELECT from a registered buffer ring
//! (the kernel picks the buffer), on epoll a recv(2) on readiness into a buffer from a
//! small free list. An idle connection then holds no receive buffer.
//!
//! One pool per runtime (so per thread), of buffers of one size, created on first use or
//! by [`configure_provided_bufs`]; its buffers are allocated in chunks as receives need
//! them, up to a cap, beyond which receives fall back to buffers of their own.

use std::{
    cell::{Cell, RefCell},
    fmt, io,
    ops::{Deref, DerefMut},
    rc::Rc,
};

#[cfg(all(target_os = "linux", feature = "iouring"))]
use {crate::driver::BufRing, std::ptr::NonNull};

use super::IoBuf;

/// Sizes of a runtime's pool of receive buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProvidedBufConfig {
    /// Bytes per buffer: the most one receive returns.
    pub size: usize,
    /// Most buffers the pool allocates (at most 32768); receives beyond them use buffers
    /// of their own (on io_uring, one parked with the receive) until some come back.
    pub max: usize,
}

impl ProvidedBufConfig {
    /// A page a buffer, and 4 MiB at most of them per thread.
    pub const DEFAULT: ProvidedBufConfig = ProvidedBufConfig::new(4096, 1024);

    /// `size` bytes per buffer, `max` buffers at most.
    pub const fn new(size: usize, max: usize) -> Self {
        ProvidedBufConfig { size, max }
    }

    fn check(&self) -> io::Result<()> {
        #[cfg(all(target_os = "linux", feature = "iouring"))]
        let max_buffers = crate::driver::MAX_PROVIDED_BUFFERS;
        #[cfg(not(all(target_os = "linux", feature = "iouring")))]
        let max_buffers = 1 << 15;
        if self.size == 0 || self.size > u32::MAX as usize || self.max == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provided buffers need a size and a count of at least 1",
            ));
        }
        if self.max > max_buffers {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at most 32768 provided buffers",
            ));
        }
        Ok(())
    }
}

impl Default for ProvidedBufConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How this runtime's receives get their buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvidedBufMode {
    /// io_uring picks one from a registered buffer ring when data arrives.
    Ring,
    /// io_uring refused the buffer ring (this errno; Linux before 5.19 says EINVAL):
    /// each receive parks a buffer of its own, as an ordinary one does.
    Refused(i32),
    /// The epoll driver: a buffer is taken once the socket is readable.
    Epoll,
}

/// A snapshot of this runtime's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProvidedBufStats {
    /// How receives get their buffers.
    pub mode: ProvidedBufMode,
    /// The pool's sizes.
    pub config: ProvidedBufConfig,
    /// Buffers of the kernel ring allocated so far.
    pub allocated: usize,
    /// Of those, buffers in the ring for the kernel to fill, as the kernel counts them
    /// (Linux 6.8+, else `None`). With every completion reaped,
    /// `in_ring + lent == allocated`: less means a buffer was lost.
    pub in_ring: Option<usize>,
    /// Of those, buffers held by a [`ProvidedBuf`].
    pub lent: usize,
    /// Buffers of their own kept for reuse (epoll, and io_uring fallbacks).
    pub spares: usize,
    /// Receives that found the kernel ring empty at its cap and used a buffer of their own.
    pub fallbacks: u64,
}

/// Creates this runtime's pool with `config` (registering io_uring's buffer ring now, but
/// allocating no buffer yet) and says how receives will get their buffers. Call it on
/// each runtime's thread, inside the runtime, before its first `recv_provided`, which
/// otherwise creates the pool with [`ProvidedBufConfig::DEFAULT`].
///
/// Fails with `AlreadyExists` if the pool exists with another configuration,
/// `InvalidInput` for a size or count out of range, `Other` outside a runtime.
pub fn configure_provided_bufs(config: ProvidedBufConfig) -> io::Result<ProvidedBufMode> {
    BufPool::current(Some(config)).map(|pool| pool.mode)
}

/// This runtime's pool; `None` outside a runtime or before its first use.
pub fn provided_buf_stats() -> Option<ProvidedBufStats> {
    if !crate::driver::CURRENT.is_set() {
        return None;
    }
    let pool = crate::driver::CURRENT.with(|inner| inner.provided_pool())?;
    Some(pool.stats())
}

/// Buffers of their own kept for reuse, at most: what epoll's receives take on
/// readiness, and io_uring's when the ring is spent.
const SPARES_MAX: usize = 32;

pub(crate) struct BufPool {
    config: ProvidedBufConfig,
    mode: ProvidedBufMode,
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    ring: Option<BufRing>,
    spares: RefCell<Vec<Vec<u8>>>,
    lent: Cell<usize>,
    fallbacks: Cell<u64>,
}

impl BufPool {
    /// This runtime's pool, created with `config` (or the default) if it has none yet.
    pub(crate) fn current(config: Option<ProvidedBufConfig>) -> io::Result<Rc<BufPool>> {
        if let Some(config) = &config {
            config.check()?;
        }
        if !crate::driver::CURRENT.is_set() {
            return Err(BufPool::no_runtime());
        }
        crate::driver::CURRENT.with(|inner| match inner.provided_pool() {
            Some(pool) => match config {
                Some(config) if config != pool.config => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "this runtime's provided buffers are already configured otherwise",
                )),
                _ => Ok(pool),
            },
            None => Ok(inner.create_provided_pool(config.unwrap_or_default())),
        })
    }

    pub(crate) fn no_runtime() -> io::Error {
        io::Error::new(
            io::ErrorKind::Other,
            "provided buffers need a monoio runtime on this thread",
        )
    }

    #[cfg(feature = "legacy")]
    pub(crate) fn epoll(config: ProvidedBufConfig) -> BufPool {
        BufPool::new(config, ProvidedBufMode::Epoll)
    }

    /// Registers the ring, or settles for buffers of their own if io_uring refuses.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn uring(
        config: ProvidedBufConfig,
        submitter: &io_uring::Submitter<'_>,
        ring_fd: std::os::unix::io::RawFd,
    ) -> BufPool {
        match BufRing::register(submitter, ring_fd, config.size, config.max) {
            Ok(ring) => BufPool {
                ring: Some(ring),
                ..BufPool::new(config, ProvidedBufMode::Ring)
            },
            Err(e) => BufPool::new(
                config,
                ProvidedBufMode::Refused(e.raw_os_error().unwrap_or(libc::ENOMEM)),
            ),
        }
    }

    fn new(config: ProvidedBufConfig, mode: ProvidedBufMode) -> BufPool {
        BufPool {
            config,
            mode,
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            ring: None,
            spares: RefCell::new(Vec::new()),
            lent: Cell::new(0),
            fallbacks: Cell::new(0),
        }
    }

    pub(crate) fn mode(&self) -> ProvidedBufMode {
        self.mode
    }

    pub(crate) fn size(&self) -> usize {
        self.config.size
    }

    fn stats(&self) -> ProvidedBufStats {
        #[cfg(all(target_os = "linux", feature = "iouring"))]
        let (allocated, in_ring) = match &self.ring {
            Some(ring) => (ring.allocated(), ring.in_ring()),
            None => (0, None),
        };
        #[cfg(not(all(target_os = "linux", feature = "iouring")))]
        let (allocated, in_ring) = (0, None);
        ProvidedBufStats {
            mode: self.mode,
            config: self.config,
            allocated,
            in_ring,
            lent: self.lent.get(),
            spares: self.spares.borrow().len(),
            fallbacks: self.fallbacks.get(),
        }
    }

    /// A buffer of its own, empty, with `size` bytes of capacity.
    pub(crate) fn spare(&self) -> Vec<u8> {
        self.spares
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.config.size))
    }

    /// Keeps `buf` for reuse if there is room (and it is one of ours), else frees it.
    pub(crate) fn keep_spare(&self, mut buf: Vec<u8>) {
        let mut spares = self.spares.borrow_mut();
        if buf.capacity() == self.config.size && spares.len() < SPARES_MAX.min(self.config.max) {
            buf.clear();
            spares.push(buf);
        }
    }

    /// A receive found the ring spent at its cap and takes a buffer of its own.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn count_fallback(&self) {
        self.fallbacks.set(self.fallbacks.get() + 1);
    }

    /// The ring has no buffer allocated yet: the first receive adds a chunk before it
    /// asks, rather than learning it from ENOBUFS.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn is_unfilled(&self) -> bool {
        self.ring
            .as_ref()
            .map_or(false, |ring| ring.allocated() == 0)
    }

    /// Adds a chunk of buffers to the ring; `false` at the cap.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn grow(&self) -> bool {
        self.ring.as_ref().map_or(false, BufRing::grow)
    }

    /// Takes ownership of the buffer a completion carries (`flags`), if any: every
    /// completion with IORING_CQE_F_BUFFER goes through here or `recycle`, once.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn claim(self: &Rc<Self>, flags: u32) -> Option<ProvidedBuf> {
        let bid = io_uring::cqueue::buffer_select(flags)?;
        let ring = self.ring.as_ref()?;
        let ptr = ring.buf_ptr(bid)?;
        ring.taken(bid);
        self.lent.set(self.lent.get() + 1);
        Some(ProvidedBuf {
            len: 0,
            pool: self.clone(),
            kind: Kind::Ring { bid, ptr },
        })
    }

    /// Gives back the buffer carried by a completion nobody will read (its op was
    /// dropped in flight).
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn recycle(&self, flags: u32) {
        if let (Some(bid), Some(ring)) = (io_uring::cqueue::buffer_select(flags), &self.ring) {
            if let Some(ptr) = ring.buf_ptr(bid) {
                ring.taken(bid);
                ring.give_back(bid, ptr);
            }
        }
    }

    /// The runtime is going away: the kernel must stop picking buffers before its ring
    /// closes, while `ProvidedBuf`s still alive keep the memory.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn detach(&self, submitter: &io_uring::Submitter<'_>) {
        if let Some(ring) = &self.ring {
            ring.unregister(submitter);
        }
    }
}

/// Bytes received by `recv_provided`, in a buffer of this runtime's pool that goes back
/// to it when this is dropped. Derefs to the received bytes; an `IoBuf`, so it can be
/// sent on as it is. Not `Send`: the pool belongs to one thread. Empty means EOF.
pub struct ProvidedBuf {
    len: usize,
    pool: Rc<BufPool>,
    kind: Kind,
}

enum Kind {
    /// From the kernel's ring: ours alone until given back.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    Ring { bid: u16, ptr: NonNull<u8> },
    /// A buffer of its own (epoll, or a fallback), `len` bytes long.
    Own(Vec<u8>),
}

impl ProvidedBuf {
    pub(crate) fn own(pool: Rc<BufPool>, buf: Vec<u8>) -> ProvidedBuf {
        ProvidedBuf {
            len: buf.len(),
            pool,
            kind: Kind::Own(buf),
        }
    }

    /// Records how many bytes the kernel wrote into a ring buffer.
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    pub(crate) fn set_received(&mut self, n: usize) {
        self.len = n.min(self.pool.size());
    }

    /// Whether the buffer came from io_uring's buffer ring (as opposed to one of its own).
    pub fn from_ring(&self) -> bool {
        #[cfg(all(target_os = "linux", feature = "iouring"))]
        if let Kind::Ring { .. } = self.kind {
            return true;
        }
        false
    }

    /// The buffer's size: the most one receive could have returned.
    pub fn capacity(&self) -> usize {
        self.pool.size()
    }
}

impl Deref for ProvidedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.kind {
            // SAFETY: the kernel wrote `len` (<= size) bytes at `ptr`, a buffer of the
            // pool this holds alive; the kernel picks it again only after our drop.
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            Kind::Ring { ptr, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) },
            Kind::Own(buf) => buf,
        }
    }
}

impl DerefMut for ProvidedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.kind {
            // SAFETY: as for `deref`; `&mut self` makes this the only reference.
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            Kind::Ring { ptr, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), self.len)
            },
            Kind::Own(buf) => buf,
        }
    }
}

// SAFETY: the pointer is to `len` initialised bytes and stays put when the value moves
// (a ring buffer or a Vec's heap allocation), for as long as the value lives.
unsafe impl IoBuf for ProvidedBuf {
    fn read_ptr(&self) -> *const u8 {
        match &self.kind {
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            Kind::Ring { ptr, .. } => ptr.as_ptr(),
            Kind::Own(buf) => buf.as_ptr(),
        }
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

impl Drop for ProvidedBuf {
    fn drop(&mut self) {
        match &mut self.kind {
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            Kind::Ring { bid, ptr } => {
                self.pool.lent.set(self.pool.lent.get() - 1);
                if let Some(ring) = &self.pool.ring {
                    ring.give_back(*bid, *ptr);
                }
            }
            Kind::Own(buf) => self.pool.keep_spare(std::mem::take(buf)),
        }
    }
}

impl fmt::Debug for ProvidedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedBuf")
            .field("len", &self.len)
            .field("from_ring", &self.from_ring())
            .finish()
    }
}
