//! Runs the built binary the way systemd would: listening sockets at fds 3.. with
//! LISTEN_FDS/LISTEN_PID (or through `systemd-socket-activate`), its output captured;
//! and the clients, backends and waits the tests share.

#![allow(dead_code)]

mod apt;
mod aptly;
mod backends;
mod sockets;
mod spawn;
mod transfer;
mod wait;
mod watch;

pub use apt::*;
pub use aptly::*;
pub use backends::*;
pub use sockets::*;
pub use spawn::*;
pub use transfer::*;
pub use wait::*;
pub use watch::*;

use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringsock");

/// What the test process may have inherited from a service manager and must not leak
/// into a ringsock it starts: the activation and notify protocol variables.
pub const MANAGER_ENV: [&str; 5] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
];

/// Starts `cmd` with none of [`MANAGER_ENV`]; callers then set what the test needs.
pub fn without_manager_env(cmd: &mut Command) -> &mut Command {
    for var in MANAGER_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Both runtime drivers: every behaviour test runs once per driver.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    IoUring,
    Epoll,
}

pub const DRIVERS: [Driver; 2] = [Driver::IoUring, Driver::Epoll];
