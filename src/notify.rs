//! sd_notify: READY=1, STATUS=, STOPPING=1 and watchdog pings to `NOTIFY_SOCKET`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest a message waits for room in the manager's queue before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to the service manager; every method is a no-op when not under one.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (`/path` or `@abstract`) and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> io::Result<Notifier> {
        let socket = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(path) => {
                let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
                let addr = match bytes.first() {
                    Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
                    Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&path))?,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("NOTIFY_SOCKET={path:?} is neither /path nor @abstract"),
                        ))
                    }
                };
                let socket = UnixDatagram::unbound()?;
                // The manager's queue is short (net.unix.max_dgram_qlen, 10 here): wait a
                // while for room, so READY=1 or STOPPING=1 is not lost behind pings, but
                // not forever, or a manager that stopped reading would stall signal
                // handling in the supervisor.
                socket.set_write_timeout(Some(SEND_TIMEOUT))?;
                Some((socket, addr))
            }
        };
        Ok(Notifier {
            socket,
            watchdog: watchdog_from_env(),
        })
    }

    /// How often to ping: half the manager's `WatchdogSec=`, as sd_watchdog_enabled advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|usec| usec / 2)
    }

    /// Sends one datagram of newline-separated `KEY=VALUE` lines. Failures are logged,
    /// never fatal: a service manager that went away must not take the traffic with it.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                crate::warn!("failed to notify the service manager: {e}");
            }
        }
    }
}

fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
