//! sd_notify: READY=1, STATUS=, STOPPING=1 and watchdog pings to `NOTIFY_SOCKET`.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::address::UnixAddr;

/// Longest a message waits for room in the manager's queue before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to the service manager; every method is a no-op when not under one.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (`/path` or `@abstract`) and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    /// A value it cannot use is logged and notifications are off, as sd_notify(3)
    /// leaves it to the caller, and systemd-socket-proxyd runs on.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|value| {
            notify_socket(&value)
                .map_err(|e| {
                    crate::warn!("not notifying the service manager: NOTIFY_SOCKET={value:?}: {e}")
                })
                .ok()
        });
        Notifier {
            socket,
            watchdog: watchdog_from_env(),
        }
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

fn notify_socket(value: &std::ffi::OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let text = value.to_str().ok_or_else(|| invalid("not UTF-8".into()))?;
    let addr = match UnixAddr::parse(text).map_err(invalid)? {
        Some(addr) => addr.to_socket_addr()?,
        None => {
            return Err(invalid(
                "neither /path nor @abstract (other kinds, such as vsock:, are not supported)"
                    .into(),
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    // The manager's queue is short (net.unix.max_dgram_qlen, 10 here): wait a while for
    // room, so READY=1 or STOPPING=1 is not lost behind pings, but not forever, or a
    // manager that stopped reading would stall signal handling in the supervisor.
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok((socket, addr))
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
