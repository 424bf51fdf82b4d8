//! Where the clients connect: ADDR as host:port (TCP) or /unix/path, opened either as a
//! blocking std stream (`Conn`) or, for churn, as a prebuilt raw address (`Target`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::sys;

/// A connection to ADDR, TCP with TCP_NODELAY or Unix.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn open(addr: &str) -> io::Result<Conn> {
        if addr.starts_with('/') {
            return Ok(Conn::Unix(UnixStream::connect(addr)?));
        }
        let addr: SocketAddr = addr.parse().map_err(|_| io::Error::other("bad address"))?;
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn::Tcp(stream))
    }

    pub fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Where churn connects, as a socket address built once.
#[derive(Clone, Copy)]
pub struct Target {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: i32,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread connections over (0: let the
    /// kernel choose). See churn::CHURN_SOURCES.
    sources: u32,
}

impl Target {
    /// `addr` as ADDR; over IPv4 loopback, connections will come from
    /// `loopback_sources` source addresses.
    pub fn parse(addr: &str, loopback_sources: u32) -> io::Result<Target> {
        let mut sources = 0;
        let raw = if addr.starts_with('/') {
            sys::unix_addr(addr)?
        } else {
            match addr
                .parse::<SocketAddr>()
                .map_err(|_| io::Error::other("bad address"))?
            {
                SocketAddr::V4(a) => {
                    if a.ip().is_loopback() {
                        sources = loopback_sources;
                    }
                    sys::ipv4_addr(&a)
                }
                SocketAddr::V6(a) => sys::ipv6_addr(&a),
            }
        };
        Ok(Target {
            addr: raw.storage,
            len: raw.len,
            family: raw.family,
            sources,
        })
    }

    /// A non-blocking socket with its connect started (TCP: usually still in progress);
    /// `n` picks the source address.
    pub fn connect(&self, n: u32) -> io::Result<OwnedFd> {
        let fd = sys::stream_socket(self.family)?;
        if self.family != libc::AF_UNIX {
            // As the blocking client did: the 64-byte request goes out at once.
            sys::set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        }
        if self.sources > 0 {
            // Bind only the address; IP_BIND_ADDRESS_NO_PORT leaves the port to
            // connect(), which picks one free for this source and destination.
            let no_port = libc::IP_BIND_ADDRESS_NO_PORT;
            sys::set_int_option(fd.as_raw_fd(), libc::IPPROTO_IP, no_port, 1)?;
            sys::bind_v4(fd.as_raw_fd(), 0x7f00_0001 + n % self.sources)?;
        }
        sys::connect_start(fd.as_raw_fd(), &self.addr, self.len)?;
        Ok(fd)
    }
}
