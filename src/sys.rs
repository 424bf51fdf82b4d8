//! The raw syscalls the rest of the crate needs and the runtime does not offer, each a
//! small function with its errno handling, so callers use names instead of `unsafe`.

use std::io;
use std::os::fd::RawFd;

/// Turns a syscall's `-1` into the errno it set.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// As [`cvt`] for calls that return a byte count.
pub fn cvt_size(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether `fd` is ready for `events` right now, or has an error or hang-up to report
/// (the next call on it will say which).
pub fn poll_now(fd: RawFd, events: libc::c_short) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    cvt(unsafe { libc::poll(&mut pollfd, 1, 0) })?;
    Ok(pollfd.revents & (events | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
}

/// One non-blocking recv(2) into `buf`.
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes; the fd is open.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// One read(2) into `buf` (a pipe's read end, which is non-blocking).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes; the fd is open.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// One non-blocking send(2) of `data`; `more`: more follows at once (MSG_MORE).
pub fn send_now(fd: RawFd, data: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: data is valid for reads of data.len() bytes; the fd is open.
    cvt_size(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) })
}

/// Non-blocking splice(2) between a socket and a pipe, no file offsets.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets mean "use the
    // file position", which sockets and pipes do not have.
    cvt_size(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// sendfile(2) of up to `len` bytes of `file` from `*offset`, which it advances.
pub fn sendfile(
    socket: RawFd,
    file: RawFd,
    offset: &mut libc::off_t,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both fds are open; offset is a valid off_t the kernel advances.
    cvt_size(unsafe { libc::sendfile(socket, file, offset, len) })
}

/// Bytes we sent on a socket that the peer has not taken yet (SIOCOUTQ): for TCP, not
/// yet acknowledged; for Unix sockets, not yet read.
pub fn unsent(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one int.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// How many more bytes a non-blocking send(2) or splice(2) to this connected socket can
/// queue before it fails with EAGAIN, as the kernel counts: for TCP, SO_SNDBUF less the
/// memory queued (bytes and their buffers' overhead, which SIOCOUTQ leaves out: it said
/// 60 KiB of room where the kernel took nothing), and no more than `tcp_notsent_lowat`
/// lets wait unsent; for a Unix socket, SO_SNDBUF less what its peer has not read. One
/// getsockopt(SO_MEMINFO), and an ioctl where a notsent lowat is configured.
pub fn send_room(fd: RawFd, tcp: bool) -> io::Result<usize> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len describe a writable array the kernel fills up to len.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let used = if tcp {
        libc::SK_MEMINFO_WMEM_QUEUED
    } else {
        libc::SK_MEMINFO_WMEM_ALLOC
    };
    let room = info[libc::SK_MEMINFO_SNDBUF as usize].saturating_sub(info[used as usize]) as usize;
    match tcp_notsent_lowat() {
        Some(lowat) if tcp => Ok(room.min(lowat.saturating_sub(not_sent(fd)?))),
        _ => Ok(room),
    }
}

/// `net.ipv4.tcp_notsent_lowat` when it is set (its default, 2^32-1, is "no limit"),
/// read once: ringsock sets no TCP_NOTSENT_LOWAT of its own, so every TCP socket has
/// this one. TCP takes no more unsent bytes than this, whatever SO_SNDBUF says.
fn tcp_notsent_lowat() -> Option<usize> {
    static LOWAT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *LOWAT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat").ok()?;
        let lowat: u64 = text.trim().parse().ok()?;
        (lowat < u64::from(u32::MAX)).then_some(lowat as usize)
    })
}

/// Bytes queued on a TCP socket that have not been sent yet (SIOCOUTQNSD).
fn not_sent(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int.
    cvt(unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// shutdown(2) of the write side: the peer reads EOF but may still send to us.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// shutdown(2) of both directions: ends the connection even while another descriptor
/// for the socket stays open. Errors (e.g. already disconnected) leave nothing to do.
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: plain syscall on an open fd.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Sets SO_LINGER to zero seconds on `fd`: its close sends RST, not FIN (TCP only).
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a valid, correctly sized option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An int-valued SOL_SOCKET option.
pub fn getsockopt_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for the kernel to write an int into.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The TCP state of a socket (`TCP_ESTABLISHED`, `TCP_CLOSE`, ...); `None` for other
/// kinds of socket.
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value for the kernel to fill.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len describe a writable tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0 && len > 0).then_some(info.tcpi_state)
}

/// `TCP_CLOSE` from the kernel's `enum tcp_state`, which libc does not export.
pub const TCP_CLOSE: u8 = 7;

/// Whether the byte at `offset` of `file` can be read without waiting for the disk:
/// a one-byte preadv2(2) with RWF_NOWAIT. A page still being read in (readahead in
/// flight, or a hung network or FUSE read) is not ready; only a page that is cached and
/// up to date is. `Err` when the kernel cannot tell (RWF_NOWAIT unsupported here).
pub fn readable_now(file: RawFd, offset: u64) -> io::Result<bool> {
    match read_now(file, &mut [0u8], offset) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// preadv2(2) with RWF_NOWAIT: what of `buf.len()` bytes at `offset` the page cache
/// holds up to date, from the start (short at the first page that is not; WouldBlock
/// if that is the first). Never waits for the disk.
pub fn read_now(file: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing buf, writable for its length; the fd is open.
    cvt_size(unsafe { libc::preadv2(file, &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) })
}

/// cachestat(2) (Linux 6.5) has the same number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// How many pages of `file` in `len` bytes from `offset` are in the page cache
/// (cachestat(2)), without touching the disk. Pages still being read in count as cached.
pub fn cached_pages(file: RawFd, offset: u64, len: u64) -> io::Result<u64> {
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: both structs match the kernel's layout; the fd is open; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file,
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.nr_cache)
}

/// What fstat(2) says about an open file, from the attributes the kernel holds
/// (AT_STATX_DONT_SYNC: a FUSE or network file system is not asked again).
pub fn stat_cached(fd: RawFd) -> io::Result<libc::statx> {
    // SAFETY: statx is plain data; zeroed is a valid value for the kernel to fill.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names the fd itself.
    cvt(unsafe {
        libc::statx(
            fd,
            b"\0".as_ptr().cast(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_SIZE | libc::STATX_MTIME,
            &mut stat,
        )
    })?;
    Ok(stat)
}

/// Whether `fd` is on a file system whose reads may wait on a server or a user-space
/// daemon rather than a local disk (FUSE, NFS, SMB, Ceph, 9p, AFS, Lustre...).
pub fn is_remote_or_fuse(fd: RawFd) -> io::Result<bool> {
    const REMOTE: [i64; 14] = [
        0x6573_5546, // FUSE
        0x6969,      // NFS
        0x517B,      // SMB
        0xFE53_4D42, // SMB2
        0xFF53_4D42, // CIFS
        0x00C3_6400, // Ceph
        0x0102_1997, // 9p
        0x5346_414F, // AFS
        0x6B41_4653, // kAFS
        0x7375_7245, // Coda
        0x564C,      // NCP
        0x0BD0_0BD0, // Lustre
        0x2003_0528, // OrangeFS
        0x0116_1970, // GFS2
    ];
    // SAFETY: statfs is plain data; zeroed is a valid value for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid statfs to fill; the fd is open.
    cvt(unsafe { libc::fstatfs(fd, &mut stat) })?;
    Ok(REMOTE.contains(&(stat.f_type as i64)))
}

/// Makes the calling thread give way to the workers when both want the CPU: nice 10
/// and SCHED_BATCH (no wake-up preemption of others). An I/O thread copies bulk bodies;
/// a worker answers small requests whose latency matters. Best effort.
pub fn yield_to_workers() {
    // SAFETY: plain syscalls on the calling thread (tid 0 / who 0 = this thread).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Blocks this thread caused to be read from storage so far (getrusage(RUSAGE_THREAD)'s
/// ru_inblock, readahead it started included); 0 if the kernel will not say.
pub fn blocks_read_by_this_thread() -> i64 {
    // SAFETY: rusage is plain data; zeroed is a valid value for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill, for the calling thread.
    match unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } {
        0 => usage.ru_inblock,
        _ => 0,
    }
}

/// A connected socket's peer and local addresses as IP socket addresses (`None` for
/// what is not IP), and its local path when it is a Unix socket.
pub fn socket_ends(
    fd: RawFd,
) -> (
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
    Option<Vec<u8>>,
) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the caller's fd stays open for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
    let local = socket.local_addr().ok();
    let path = local
        .as_ref()
        .and_then(|a| a.as_pathname().map(|p| p.as_os_str().as_bytes().to_vec()));
    (peer, local.and_then(|a| a.as_socket()), path)
}

/// The IP address of a connected socket's peer (an IPv4-mapped IPv6 address as IPv4);
/// `None` for a Unix socket or a peer already gone.
pub fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    // SAFETY: the caller's fd stays open for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let peer = socket2::SockRef::from(&borrowed).peer_addr().ok()?;
    Some(peer.as_socket()?.ip().to_canonical())
}

/// One non-blocking recv(2) with MSG_PEEK: the bytes stay queued for the next read.
pub fn peek_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes; the fd is open.
    cvt_size(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    })
}

/// TCP keepalive on `fd`: first probe after 60 s without traffic, then every 10 s, the
/// peer given up after 6 unanswered (about two minutes), instead of the kernel's two
/// hours. Nothing happens on a socket that is not TCP.
pub fn keep_alive(fd: RawFd) {
    // SAFETY: the caller's fd stays open for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let settings = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let _ = socket.set_tcp_keepalive(&settings);
}

/// A second descriptor for `fd` (close-on-exec), for a thread that must keep using the
/// socket or file even if its owner closes its own descriptor first.
pub fn duplicate(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain fcntl on an open fd.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fcntl just returned this new fd, which nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// openat(2) of one path component under `dir` as an `O_PATH` descriptor, never following
/// a symlink it names: the descriptor then refers to the link itself. `O_PATH` opens
/// nothing: no device driver, FIFO or file system `open` is called, and the file's
/// permissions are not checked.
pub fn open_path_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid dirfd and NUL-terminated name; the returned fd is ours.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: openat just returned this fd, which nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// openat(2) of one path component under `dir` with `flags`, plus O_NOFOLLOW and
/// O_CLOEXEC: a name that is (or has just become) a symlink fails with ELOOP.
pub fn open_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    flags: libc::c_int,
) -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid dirfd and NUL-terminated name; the returned fd is ours.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: openat just returned this fd, which nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The target of the symlink that `link` (an `O_PATH | O_NOFOLLOW` descriptor of it)
/// refers to: readlinkat(2) with an empty path.
pub fn read_link_fd(link: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    // PATH_MAX: the kernel never returns a longer target.
    let mut target = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty NUL-terminated path names the fd itself; target is writable for
    // its length.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            b"\0".as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    })?;
    target.truncate(n);
    Ok(target)
}

/// Fixes glibc malloc's thresholds so that what a burst of connections took can be given
/// back: free memory at the top of a heap past 1 MiB is returned as it is freed, and
/// blocks from 128 to 256 KiB come from the heaps rather than mmap(2). Without this, a
/// proxy that held 9,500 connections kept 37-42 MB of a 4 MB process after they closed
/// and malloc_trim(3) ran (4 runs of 4); with it, 9-14 MB (4 of 4,
/// perf/results/idle-memory-2026-12-08.md). The block that matters is monoio's table of
/// operations in flight, whose page for 4,096 entries is 192 KiB; why mmapping it keeps
/// the worker heaps resident was not pinned down, the effect was. Setting the thresholds
/// also stops glibc raising them on its own. Elsewhere than glibc, does nothing.
pub fn bound_free_heap_top() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no preconditions; called before any worker thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Gives the memory that malloc holds free back to the system (glibc's malloc_trim(3),
/// which also releases free pages inside its heaps, not only at their tops). Returns
/// whether any was given back; elsewhere than glibc, does nothing.
pub fn return_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock itself.
    return unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(target_env = "gnu"))]
    return false;
}

/// CLOCK_MONOTONIC in microseconds: what systemd's notify protocol names times in
/// (`MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: now is a valid timespec for clock_gettime to fill; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}
