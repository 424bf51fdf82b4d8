//! The proxy TARGET: parsed once with systemd-socket-proxyd's syntax, connected to per
//! client.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use socket2::{SockAddr, Socket, Type};

use super::resolve::Resolver;
use crate::address::UnixAddr;
use crate::net::Stream;
use crate::systemd::activation::Family;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/path/to.sock`
    Path(PathBuf),
    /// `@name`: a socket in the abstract namespace.
    Abstract(Vec<u8>),
    /// An IP literal: no lookup per connection.
    Addr(SocketAddr),
    /// A host name, resolved with the system resolver while connections come in (each
    /// answer serves for a second, see `resolve`), so DNS changes take effect without a
    /// restart, as with systemd-socket-proxyd's lookup per connection.
    Host { host: String, port: u16 },
}

const DEFAULT_PORT: u16 = 80;

impl Target {
    /// `/path`, `@abstract`, `host:port`, `host` (port 80), `[v6]:port`, `[v6]`, and
    /// systemd's `::1:80` (split at the last colon).
    pub fn parse(text: &str) -> Result<Target, String> {
        if text.is_empty() {
            return Err(
                "TARGET is empty; use HOST:PORT, [V6]:PORT, /path/to.sock or @abstract".into(),
            );
        }
        // Checked here, or every connection would fail with the same error.
        match UnixAddr::parse(text) {
            Ok(Some(UnixAddr::Path(path))) => return Ok(Target::Path(path)),
            Ok(Some(UnixAddr::Abstract(name))) => return Ok(Target::Abstract(name)),
            Ok(None) => {}
            Err(e) => return Err(format!("invalid TARGET {text:?}: {e}")),
        }
        if text.contains('/') {
            // systemd-socket-proxyd would take this for a host name and fail every
            // connection with "Failed to resolve host"; no host name has a '/'
            // (abstract names may: they were taken above).
            return Err(format!(
                "invalid TARGET {text:?}: a Unix socket path must be absolute (start with \
                 '/'), e.g. /run/app.sock"
            ));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(|| {
                format!("invalid TARGET {text:?}: missing ']' after the IPv6 address")
            })?;
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("invalid TARGET {text:?}: {addr:?} is not an IPv6 address"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                _ => parse_port(text, after.strip_prefix(':').unwrap_or(after))?,
            };
            return Ok(Target::Addr(SocketAddr::new(ip.into(), port)));
        }
        // systemd splits at the last colon, so `::1:8080` is host ::1, port 8080. Only
        // when that split does not give an IP literal is the whole text tried as one
        // (`::1`, `fe80::1`), with port 80.
        if let Some((host, port)) = text.rsplit_once(':') {
            if let (Ok(ip), Ok(port)) = (host.parse::<IpAddr>(), parse_port(text, port)) {
                return Ok(Target::Addr(SocketAddr::new(ip, port)));
            }
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Target::Addr(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(text, port)?),
            None => (text, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(format!("invalid TARGET {text:?}: the host is empty"));
        }
        // No host name has a ':'; getaddrinfo takes one only in a scoped IPv6 literal
        // (`fe80::1%eth0`). Anything else failed every connection, and was logged as
        // `{host}:{port}`, which can read as another address (`::08080` as `::8080`).
        if host.contains(':') && !host.contains('%') {
            return Err(format!(
                "invalid TARGET {text:?}: {host:?} is neither an IP address nor a host name; \
                 write an IPv6 address as [V6]:PORT"
            ));
        }
        Ok(Target::Host {
            host: host.to_owned(),
            port,
        })
    }

    /// Connects, trying each resolved address in turn, all within `timeout` (set by the
    /// option `timeout_flag`, which a timeout's error names). `resolver` is this worker's
    /// for this target.
    pub async fn connect(
        &self,
        timeout: Duration,
        timeout_flag: &str,
        resolver: &Resolver,
    ) -> io::Result<Stream> {
        let backlog_full = Cell::new(false);
        match monoio::time::timeout(timeout, self.connect_any(resolver, &backlog_full)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {timeout:?} ({timeout_flag}){}",
                    if backlog_full.get() {
                        "; its listen backlog stayed full: the service is not accepting \
                         fast enough"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// `backlog_full` is set while a Unix target refuses for a full listen backlog.
    async fn connect_any(
        &self,
        resolver: &Resolver,
        backlog_full: &Cell<bool>,
    ) -> io::Result<Stream> {
        match self {
            Target::Path(path) => connect(&SockAddr::unix(path)?, Family::Unix, backlog_full).await,
            Target::Abstract(name) => {
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                let addr = SockAddr::unix(OsStr::from_bytes(&bytes))?;
                connect(&addr, Family::Unix, backlog_full).await
            }
            Target::Addr(addr) => connect(&(*addr).into(), Family::Tcp, backlog_full).await,
            Target::Host { host, port } => {
                let addrs = resolver.resolve(host, *port).await?;
                let mut last = io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host:?} has no addresses"),
                );
                for &addr in addrs.iter() {
                    match connect(&addr.into(), Family::Tcp, backlog_full).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
                    }
                }
                Err(last)
            }
        }
    }
}

fn parse_port(text: &str, port: &str) -> Result<u16, String> {
    port.parse()
        .map_err(|_| format!("invalid TARGET {text:?}: {port:?} is not a port number (1-65535)"))
        .and_then(|p| {
            if p == 0 {
                Err(format!("invalid TARGET {text:?}: port 0"))
            } else {
                Ok(p)
            }
        })
}

/// A non-blocking connect driven by write readiness.
async fn connect(addr: &SockAddr, family: Family, backlog_full: &Cell<bool>) -> io::Result<Stream> {
    let mut retry_delay = Duration::from_millis(1);
    loop {
        let socket = Socket::new(addr.domain(), Type::STREAM.nonblocking().cloexec(), None)?;
        match socket.connect(addr) {
            Ok(()) => return Stream::from_fd(socket.into(), family),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                let stream = Stream::from_fd(socket.into(), family)?;
                // A connecting socket's POLLOUT comes with the connect's end (SO_ERROR
                // says how): no half-closed peer can make it fire early.
                stream.writable(false).await?;
                return match stream.take_error()? {
                    None => Ok(stream),
                    Some(e) => Err(e),
                };
            }
            // A Unix socket whose backlog is full says EAGAIN instead of queueing us: the
            // backend is busy, not gone. Retry until --connect-timeout rather than drop
            // the client.
            Err(e) if family == Family::Unix && e.raw_os_error() == Some(libc::EAGAIN) => {
                backlog_full.set(true);
                monoio::time::sleep(retry_delay).await;
                retry_delay = (retry_delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(path) => write!(f, "{}", path.display()),
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Target::Addr(addr) => write!(f, "{addr}"),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Target {
        Target::Addr(text.parse().unwrap())
    }

    #[test]
    fn parses_systemd_socket_proxyd_targets() {
        assert_eq!(
            Target::parse("/home/archive/aptly.sock"),
            Ok(Target::Path("/home/archive/aptly.sock".into()))
        );
        assert_eq!(
            Target::parse("@aptly"),
            Ok(Target::Abstract(b"aptly".to_vec()))
        );
        assert_eq!(
            Target::parse("@run/aptly"),
            Ok(Target::Abstract(b"run/aptly".to_vec()))
        );
        assert_eq!(Target::parse("127.0.0.1:8080"), Ok(addr("127.0.0.1:8080")));
        assert_eq!(Target::parse("127.0.0.1"), Ok(addr("127.0.0.1:80")));
        assert_eq!(Target::parse("[::1]:8080"), Ok(addr("[::1]:8080")));
        assert_eq!(Target::parse("[::1]"), Ok(addr("[::1]:80")));
        assert_eq!(Target::parse("::1:8080"), Ok(addr("[::1]:8080")));
        assert_eq!(Target::parse("::1"), Ok(addr("[::1]:80")));
        assert_eq!(
            Target::parse("localhost:3000"),
            Ok(Target::Host {
                host: "localhost".into(),
                port: 3000
            })
        );
        assert_eq!(
            Target::parse("example.org"),
            Ok(Target::Host {
                host: "example.org".into(),
                port: 80
            })
        );
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        assert!(Target::parse("").unwrap_err().contains("HOST:PORT"));
        assert!(Target::parse("host:http")
            .unwrap_err()
            .contains("not a port number"));
        assert!(Target::parse("host:70000")
            .unwrap_err()
            .contains("not a port number"));
        assert!(Target::parse("[::1:80")
            .unwrap_err()
            .contains("missing ']'"));
        assert!(Target::parse("[nope]:80")
            .unwrap_err()
            .contains("not an IPv6 address"));
        assert!(Target::parse(":80").unwrap_err().contains("host is empty"));
        // Found by fuzzing: host ':' and port 8080, which it printed as [::8080]:80.
        assert!(Target::parse("::08080")
            .unwrap_err()
            .contains("neither an IP address nor a host name"));
        assert!(Target::parse("1:2:3:80").is_err());
        assert_eq!(
            Target::parse("fe80::1%eth0:80"),
            Ok(Target::Host {
                host: "fe80::1%eth0".into(),
                port: 80
            })
        );
        assert!(Target::parse("@").is_err());
        assert!(Target::parse("run/app.sock")
            .unwrap_err()
            .contains("must be absolute"));
        let longest = format!("/{}", "a".repeat(106));
        assert!(Target::parse(&longest).is_ok());
        assert!(Target::parse(&format!("{longest}a"))
            .unwrap_err()
            .contains("at most 107 bytes"));
        assert!(Target::parse(&format!("@{}", "b".repeat(108)))
            .unwrap_err()
            .contains("at most 107 bytes"));
    }
}
