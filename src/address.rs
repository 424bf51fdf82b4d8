//! The Unix-socket forms of the address syntax that TARGET, `--listen` and
//! NOTIFY_SOCKET share: `/path` and `@abstract`, parsed and checked in one place.

use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::PathBuf;

/// sockaddr_un's sun_path holds 108 bytes, one of them the terminating (or, for an
/// abstract name, leading) NUL.
pub const MAX_UNIX_PATH: usize = 107;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnixAddr {
    /// `/path/to.sock`
    Path(PathBuf),
    /// `@name`: a socket in the abstract namespace.
    Abstract(Vec<u8>),
}

impl UnixAddr {
    /// `Ok(None)` when `text` is in neither form (the caller tries its others); the
    /// error says what is wrong with one that is, without the caller's context.
    pub fn parse(text: &str) -> Result<Option<UnixAddr>, String> {
        if text.starts_with('/') {
            if text.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "a Unix socket path can have at most {MAX_UNIX_PATH} bytes; use a \
                     shorter path or a link to it"
                ));
            }
            return Ok(Some(UnixAddr::Path(PathBuf::from(text))));
        }
        let Some(name) = text.strip_prefix('@') else {
            return Ok(None);
        };
        if name.is_empty() {
            return Err("abstract socket name after '@' is empty".into());
        }
        if name.len() > MAX_UNIX_PATH {
            return Err(format!(
                "an abstract socket name can have at most {MAX_UNIX_PATH} bytes"
            ));
        }
        Ok(Some(UnixAddr::Abstract(name.as_bytes().to_vec())))
    }

    pub fn to_socket_addr(&self) -> io::Result<SocketAddr> {
        match self {
            UnixAddr::Path(path) => SocketAddr::from_pathname(path),
            UnixAddr::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixAddr::Path(path) => write!(f, "{}", path.display()),
            UnixAddr::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_within_sun_path() {
        assert_eq!(
            UnixAddr::parse("/run/a.sock"),
            Ok(Some(UnixAddr::Path("/run/a.sock".into())))
        );
        assert_eq!(
            UnixAddr::parse("@ring"),
            Ok(Some(UnixAddr::Abstract(b"ring".to_vec())))
        );
        assert_eq!(UnixAddr::parse("127.0.0.1:80"), Ok(None));
        assert!(UnixAddr::parse("@").unwrap_err().contains("empty"));
        let long = format!("/{}", "a".repeat(MAX_UNIX_PATH));
        assert!(UnixAddr::parse(&long).unwrap_err().contains("at most 107"));
        assert!(UnixAddr::parse(&format!("@{}", "b".repeat(108)))
            .unwrap_err()
            .contains("at most 107"));
    }
}
