//! Connected stream sockets (TCP or Unix) as the handlers see them: [`Stream`], the
//! owned halves two directions of a proxied connection use at once ([`Duplex`]), and
//! the lingering close.

mod duplex;
mod linger;
mod stream;

pub use duplex::{Duplex, ReadHalf, WriteHalf};
pub use linger::{linger, Linger};
pub use stream::Stream;

use std::io;

/// Whether an error means the peer is gone (as opposed to a local failure).
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED | libc::ETIMEDOUT | libc::ENOTCONN
        )
    )
}
