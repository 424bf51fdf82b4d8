//! Where listening sockets come from: systemd socket activation (`sd_listen_fds`
//! semantics) or `--listen` addresses bound by ringsock itself.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;

use socket2::{Domain, Socket, Type};

use crate::address;
use crate::sys::getsockopt_int;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// Listen backlog for sockets ringsock binds itself; systemd's `Backlog=` default.
const BACKLOG: i32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Tcp,
    Unix,
}

/// A listening stream socket, owned until the workers take their clones of it.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub family: Family,
    /// `LISTEN_FDNAMES` entry, or the `--listen` text.
    pub name: String,
    /// What it listens on, for logs and STATUS=.
    pub address: String,
    /// A socket file ringsock created and removes again on exit.
    pub owned_path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug)]
pub enum ActivationError {
    /// LISTEN_FDS or LISTEN_FDNAMES are malformed.
    Environment(String),
    /// A passed fd is not something ringsock can accept on.
    BadFd {
        fd: RawFd,
        name: String,
        why: String,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::Environment(why) => {
                write!(f, "bad socket activation environment: {why}")
            }
            ActivationError::BadFd { fd, name, why } => write!(
                f,
                "passed fd {fd} (name {name:?}) is not a listening stream socket: {why}; \
                 use ListenStream= in the .socket unit (not ListenDatagram=, Accept=yes or a FIFO)"
            ),
        }
    }
}

/// Takes the sockets systemd passed, if any were passed to this process.
///
/// Follows `sd_listen_fds(unset_environment=1)`: the variables are only honoured when
/// `LISTEN_PID` is our pid, and are removed either way so nothing we spawn inherits
/// them. Must run before any thread starts (it changes the environment).
pub fn take_activated() -> Result<Vec<Listener>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in [
        "LISTEN_PID",
        "LISTEN_PIDFDID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ] {
        std::env::remove_var(var);
    }
    let Some(names) = parse_environment(
        pid.as_deref(),
        count.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    let mut listeners = Vec::with_capacity(names.len());
    for (fd, name) in (LISTEN_FDS_START..).zip(names) {
        listeners.push(adopt(fd, name)?);
    }
    Ok(listeners)
}

/// Validates `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` as taken from the
/// environment: one name per passed fd, `None` when the fds are not ours (no variables,
/// or another process's pid). Kept apart from [`take_activated`] so it can be tested and
/// fuzzed without touching the environment or fds.
pub fn parse_environment(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<String>>, ActivationError> {
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(our_pid) {
        crate::debug!("LISTEN_PID={pid} is not our pid; ignoring LISTEN_FDS");
        return Ok(None);
    }
    // The cap keeps `LISTEN_FDS_START + count` far from overflowing an fd number.
    let count: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| {
            ActivationError::Environment(format!("LISTEN_FDS={count:?} is not a count of fds"))
        })?;
    let names: Vec<String> = match names {
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count as usize {
                return Err(ActivationError::Environment(format!(
                    "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
                    names.len()
                )));
            }
            names
        }
        None => vec!["unknown".to_owned(); count as usize],
    };
    Ok(Some(names))
}

fn adopt(fd: RawFd, name: String) -> Result<Listener, ActivationError> {
    let bad = |why: String| ActivationError::BadFd {
        fd,
        name: name.clone(),
        why,
    };
    // SAFETY: stat is plain data; zeroed is a valid value for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only reads the fd's metadata into stat; a closed fd yields EBADF.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(bad(format!("fstat failed: {}", io::Error::last_os_error())));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("it is not a socket".into()));
    }
    let sock_type = getsockopt_int(fd, libc::SO_TYPE).map_err(|e| bad(e.to_string()))?;
    if sock_type != libc::SOCK_STREAM {
        return Err(bad(format!("socket type {sock_type} is not SOCK_STREAM")));
    }
    if getsockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))? == 0 {
        return Err(bad(
            "the socket is not listening (is it a connection from Accept=yes?)".into(),
        ));
    }
    let family = match getsockopt_int(fd, libc::SO_DOMAIN).map_err(|e| bad(e.to_string()))? {
        libc::AF_INET | libc::AF_INET6 => Family::Tcp,
        libc::AF_UNIX => Family::Unix,
        other => {
            return Err(bad(format!(
                "address family {other} is not IPv4, IPv6 or Unix"
            )))
        }
    };
    // SAFETY: systemd handed this fd to us and nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(fd);
    set_flags(&socket).map_err(|e| bad(e.to_string()))?;
    let address = describe(&socket, family);
    Ok(Listener {
        fd: socket.into(),
        family,
        name,
        address,
        owned_path: None,
    })
}

fn set_flags(socket: &Socket) -> io::Result<()> {
    socket.set_cloexec(true)?;
    // Activated fds arrive blocking; the epoll driver would stall a worker on them.
    socket.set_nonblocking(true)
}

fn describe(socket: &Socket, family: Family) -> String {
    let Ok(addr) = socket.local_addr() else {
        return "?".into();
    };
    match family {
        Family::Tcp => addr
            .as_socket()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into()),
        Family::Unix => {
            if let Some(path) = addr.as_pathname() {
                path.display().to_string()
            } else if let Some(name) = addr.as_abstract_namespace() {
                format!("@{}", String::from_utf8_lossy(name))
            } else {
                "(unnamed)".into()
            }
        }
    }
}

/// An address given to `--listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Inet(std::net::SocketAddr),
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl ListenAddr {
    /// `HOST:PORT`, `[V6]:PORT`, `/path`, `@name`. Hosts must be IP literals: binding
    /// to whatever a name resolves to at start-up is rarely what anyone meant.
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        match address::UnixAddr::parse(text) {
            Ok(Some(address::UnixAddr::Path(path))) => return Ok(ListenAddr::Path(path)),
            Ok(Some(address::UnixAddr::Abstract(name))) => return Ok(ListenAddr::Abstract(name)),
            Ok(None) => {}
            Err(e) => return Err(format!("invalid listen address {text:?}: {e}")),
        }
        if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
            return Ok(ListenAddr::Inet(addr));
        }
        if let Ok(port) = text.parse::<u16>() {
            // A bare port, as in systemd's ListenStream=8080: all addresses, v4 and v6.
            return Ok(ListenAddr::Inet(
                (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
            ));
        }
        Err(format!(
            "invalid listen address {text:?}; use HOST:PORT (IP literal), [V6]:PORT, PORT, /path or @name"
        ))
    }

    pub fn bind(&self) -> io::Result<Listener> {
        let (socket, family, owned_path) = match self {
            ListenAddr::Inet(addr) => {
                let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(false)?;
                }
                socket.bind(&(*addr).into())?;
                (socket, Family::Tcp, None)
            }
            ListenAddr::Path(path) => {
                remove_stale_socket(path)?;
                let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                socket.bind(&socket2::SockAddr::unix(path)?)?;
                (socket, Family::Unix, Some(path.clone()))
            }
            ListenAddr::Abstract(name) => {
                let listener = UnixListener::bind_addr(&UnixAddr::from_abstract_name(name)?)?;
                (Socket::from(OwnedFd::from(listener)), Family::Unix, None)
            }
        };
        socket.listen(BACKLOG)?;
        set_flags(&socket)?;
        let address = describe(&socket, family);
        Ok(Listener {
            fd: socket.into(),
            family,
            name: self.to_string(),
            address,
            owned_path,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(addr) => write!(f, "{addr}"),
            ListenAddr::Path(path) => write!(f, "{}", path.display()),
            ListenAddr::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// A socket file left by a process that died is removed; a live one is an error.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket",
            )),
            Err(_) => std::fs::remove_file(path),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080"),
            Ok(ListenAddr::Inet("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:80"),
            Ok(ListenAddr::Inet("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            ListenAddr::parse("/run/a.sock"),
            Ok(ListenAddr::Path("/run/a.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("@ring"),
            Ok(ListenAddr::Abstract(b"ring".to_vec()))
        );
        assert!(matches!(ListenAddr::parse("8080"), Ok(ListenAddr::Inet(a)) if a.port() == 8080));
        assert!(ListenAddr::parse("localhost:80")
            .unwrap_err()
            .contains("IP literal"));
        assert!(ListenAddr::parse("@").is_err());
    }

    #[test]
    fn validates_the_activation_environment() {
        let parse = |pid, count, names| parse_environment(pid, count, names, 42);
        assert_eq!(parse(None, Some("2"), None).unwrap(), None);
        assert_eq!(parse(Some("42"), None, None).unwrap(), None);
        assert_eq!(parse(Some("41"), Some("2"), Some("a:b")).unwrap(), None);
        assert_eq!(
            parse(Some("42"), Some("2"), None).unwrap(),
            Some(vec!["unknown".to_owned(), "unknown".to_owned()])
        );
        assert_eq!(
            parse(Some(" 42 "), Some("2"), Some("web:")).unwrap(),
            Some(vec!["web".to_owned(), String::new()])
        );
        let message = |r: Result<_, ActivationError>| r.unwrap_err().to_string();
        assert_eq!(
            message(parse(Some("42"), Some("4097"), None)),
            "bad socket activation environment: LISTEN_FDS=\"4097\" is not a count of fds"
        );
        assert!(message(parse(Some("42"), Some("-1"), None)).contains("not a count"));
        assert_eq!(
            message(parse(Some("42"), Some("1"), Some("a:b"))),
            "bad socket activation environment: LISTEN_FDNAMES has 2 names for LISTEN_FDS=1"
        );
    }
}
