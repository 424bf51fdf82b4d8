//! Receives waiting on quiet connections, moved off their buffers. While a connection is
//! busy its receive waits with the connection's own buffer: one submission per message,
//! no extra round trip. Once a receive has waited through a whole sweep period (1 to 2 s)
//! it is cancelled, and the connection waits on with no buffer at all (the kernel picks
//! one from the worker's pool when data comes: `Stream::recv_provided`), so an idle
//! connection costs its task and its socket, not its buffers. Doing that for every
//! receive cost about 100 ns a message on io_uring (perf/results/provided-buffers-*.md);
//! this costs a slot taken and given back.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use monoio::net::RecvCanceller;

/// How often parked receives are looked at; one parked through a whole period is
/// cancelled.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One worker's parked receives.
#[derive(Default)]
pub struct Parking {
    slots: RefCell<Slots>,
    /// Sweeps so far.
    epoch: Cell<u64>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Parked>>,
    free: Vec<usize>,
}

struct Parked {
    canceller: RecvCanceller,
    /// The sweep count when it parked.
    since: u64,
    cancelled: bool,
}

/// A parked receive's place, given back when dropped. Dropped in the poll that takes the
/// receive's result (no await between them), so a sweep never cancels a receive that is
/// already done, whose slot in the runtime may belong to another operation by then.
pub struct Ticket<'a> {
    parking: &'a Parking,
    slot: usize,
}

impl Parking {
    /// Parks the receive that `canceller` cancels, until the ticket is dropped.
    pub fn park(&self, canceller: RecvCanceller) -> Ticket<'_> {
        let parked = Parked {
            canceller,
            since: self.epoch.get(),
            cancelled: false,
        };
        let mut slots = self.slots.borrow_mut();
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.entries[slot] = Some(parked);
                slot
            }
            None => {
                slots.entries.push(Some(parked));
                slots.entries.len() - 1
            }
        };
        Ticket {
            parking: self,
            slot,
        }
    }

    /// Cancels every receive parked since before the last sweep; returns how many.
    pub fn sweep(&self) -> usize {
        let epoch = self.epoch.get() + 1;
        self.epoch.set(epoch);
        let mut cancelled = 0;
        for parked in self.slots.borrow_mut().entries.iter_mut().flatten() {
            if !parked.cancelled && parked.since + 1 < epoch {
                parked.cancelled = true;
                cancelled += 1;
                // SAFETY: an entry exists only while its receive is pending: the ticket
                // that removes it is dropped in the same poll that takes the result.
                unsafe { parked.canceller.cancel() };
            }
        }
        cancelled
    }

    /// Receives parked now.
    pub fn parked(&self) -> usize {
        let slots = self.slots.borrow();
        slots.entries.len() - slots.free.len()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut slots = self.parking.slots.borrow_mut();
        slots.entries[self.slot] = None;
        slots.free.push(self.slot);
    }
}
