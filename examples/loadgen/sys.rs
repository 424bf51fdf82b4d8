//! Every raw libc call loadgen makes, each a small function with its errno handling, so
//! the workloads call them by name and hold no `unsafe` of their own.

use std::io;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// -1 → the errno as an io::Error.
pub fn cvt(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A call's return value as the new fd it created, which nothing else owns yet.
fn new_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret as isize)? as RawFd;
    // SAFETY: only called with the result of socket/accept4/epoll_create1, which on
    // success return a fresh fd that no other owner knows of.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the whole call.
    cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL: a peer that went away is an error for this connection, not SIGPIPE.
    // SAFETY: buf is valid for reads of buf.len() bytes for the whole call.
    cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers; on a bad fd it fails with EBADF.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) } as isize).map(drop)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL take no pointers; on a bad fd they fail with EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) } as isize)? as libc::c_int;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } as isize).map(drop)
}

/// Sets the backlog of a socket that is already listening (std's is 128).
pub fn listen(fd: RawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes no pointers; on a bad fd it fails with EBADF.
    cvt(unsafe { libc::listen(fd, backlog) } as isize).map(drop)
}

/// The next pending connection, non-blocking and close-on-exec.
pub fn accept(listen_fd: RawFd) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: null address and length pointers tell accept4 not to write the peer's
    // address anywhere.
    new_fd(unsafe { libc::accept4(listen_fd, std::ptr::null_mut(), std::ptr::null_mut(), flags) })
}

/// A non-blocking, close-on-exec stream socket of `family`.
pub fn stream_socket(family: i32) -> io::Result<OwnedFd> {
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes no pointers.
    new_fd(unsafe { libc::socket(family, kind, 0) })
}

/// Sets an int-valued socket option such as TCP_NODELAY.
pub fn set_int_option(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option value points at a live c_int and len is its size.
    let ret =
        unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), len) };
    cvt(ret as isize).map(drop)
}

/// Binds `fd` to IPv4 address `ip` (host order), port 0.
pub fn bind_v4(fd: RawFd, ip: u32) -> io::Result<()> {
    // SAFETY: sockaddr_in is plain integers, for which all-zero is a valid value.
    let mut src: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    src.sin_family = libc::AF_INET as libc::sa_family_t;
    src.sin_addr.s_addr = ip.to_be();
    let sa = (&src as *const libc::sockaddr_in).cast();
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa points at a live sockaddr_in of len bytes.
    cvt(unsafe { libc::bind(fd, sa, len) } as isize).map(drop)
}

/// Starts connecting non-blocking `fd` to `addr`; EINPROGRESS is success here, the
/// outcome shows up on the first send.
pub fn connect_start(
    fd: RawFd,
    addr: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<()> {
    let sa = (addr as *const libc::sockaddr_storage).cast();
    // SAFETY: sa points at a live sockaddr_storage, which is at least len bytes.
    if unsafe { libc::connect(fd, sa, len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(())
}

/// A socket address in a sockaddr_storage, its length and its family.
pub struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
    pub family: i32,
}

/// `addr` (one of the libc::sockaddr_* types) placed at the start of a sockaddr_storage.
fn raw_addr<T: Copy>(addr: T, family: i32) -> RawAddr {
    // Holds for every sockaddr_* type, the only ones this is called with.
    assert!(std::mem::size_of::<T>() <= std::mem::size_of::<libc::sockaddr_storage>());
    assert!(std::mem::align_of::<T>() <= std::mem::align_of::<libc::sockaddr_storage>());
    // SAFETY: sockaddr_storage is plain integers, for which all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: the asserts above: T fits in storage and storage is aligned enough for it.
    unsafe {
        (&mut storage as *mut libc::sockaddr_storage)
            .cast::<T>()
            .write(addr)
    };
    RawAddr {
        storage,
        len: std::mem::size_of::<T>() as libc::socklen_t,
        family,
    }
}

pub fn unix_addr(path: &str) -> io::Result<RawAddr> {
    // SAFETY: sockaddr_un is plain integers, for which all-zero is a valid value.
    let mut un: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Shorter than sun_path, so the all-zero tail terminates it.
    if path.len() >= un.sun_path.len() {
        return Err(io::Error::other("unix socket path too long"));
    }
    un.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in un.sun_path.iter_mut().zip(path.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(raw_addr(un, libc::AF_UNIX))
}

pub fn ipv4_addr(a: &SocketAddrV4) -> RawAddr {
    // SAFETY: sockaddr_in is plain integers, for which all-zero is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = a.port().to_be();
    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    raw_addr(sin, libc::AF_INET)
}

pub fn ipv6_addr(a: &SocketAddrV6) -> RawAddr {
    // SAFETY: sockaddr_in6 is plain integers, for which all-zero is a valid value.
    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sin6.sin6_port = a.port().to_be();
    sin6.sin6_addr.s6_addr = a.ip().octets();
    sin6.sin6_scope_id = a.scope_id();
    raw_addr(sin6, libc::AF_INET6)
}

pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers.
    new_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

pub fn epoll_ctl(ep: &OwnedFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ev is a live epoll_event; the kernel copies it and keeps no pointer.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) } as isize).map(drop)
}

/// Level-triggered interests. Reading also asks for EPOLLRDHUP so that the event says
/// when the peer's FIN is already queued: then reading on to EOF saves a wakeup.
pub const WANT_READ: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
pub const WANT_WRITE: u32 = libc::EPOLLOUT as u32;

/// Tells epoll to wait for `want` on `fd` (0: not registered yet), with as few
/// epoll_ctl calls as possible: none while the interest stays the same.
pub fn epoll_want(
    ep: &OwnedFd,
    fd: RawFd,
    registered: &mut u32,
    want: u32,
    token: u64,
) -> io::Result<()> {
    if *registered == want {
        return Ok(());
    }
    let op = if *registered == 0 {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_MOD
    };
    epoll_ctl(ep, op, fd, want, token)?;
    *registered = want;
    Ok(())
}

/// Waits up to `timeout_ms` and returns the ready events (none on EINTR).
pub fn epoll_wait<'a>(
    ep: &OwnedFd,
    events: &'a mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<&'a [libc::epoll_event]> {
    let max = events.len() as i32;
    // SAFETY: events is valid for writes of `max` entries for the whole call.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(&[])
        } else {
            Err(e)
        };
    }
    Ok(&events[..n as usize])
}

/// Events carry slot/fd in the low 32 bits and a generation in the high 32, so an event
/// still queued for a connection closed earlier in the same batch cannot act on a new
/// connection that reused its fd or slot.
pub fn token(index: usize, generation: u32) -> u64 {
    index as u64 | ((generation as u64) << 32)
}

/// The slot/fd and the generation `token` packed.
pub fn untoken(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

/// Bytes waiting in a socket's receive queue (FIONREAD).
pub fn queued_in(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } as isize)?;
    Ok(n.max(0) as usize)
}
