//! Signals: TERM and INT stop the server; the ones whose default action would kill it
//! with no drain are taken and logged instead. All are blocked in every thread and
//! waited for by the supervisor alone.

use std::io;
use std::time::Duration;

/// Signals that begin the graceful shutdown.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];
/// Signals whose default action would end the process at once, dropping every open
/// connection with a clean-looking FIN: taken and logged instead. logrotate sends USR1,
/// `systemctl reload` or a closed terminal HUP.
const IGNORED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGIO,
];

pub fn is_stop(signal: libc::c_int) -> bool {
    STOP_SIGNALS.contains(&signal)
}

pub fn note_ignored(signal: libc::c_int) {
    crate::info!(
        "received {}; ignored (nothing to reload or reopen here: restart ringsock to \
         change its flags)",
        signal_name(signal)
    );
}

/// Blocks the signals in this thread, and so in every thread it starts afterwards: they
/// wait for [`wait_signal`] instead of killing the process.
pub fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS.iter().chain(&IGNORED_SIGNALS) {
            libc::sigaddset(&mut set, *signal);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The next signal of `set` within `timeout`.
pub fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set was initialised by block_signals; a null siginfo is allowed.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (signal > 0).then_some(signal)
}

pub fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGIO => "SIGIO",
        _ => "a signal",
    }
}
