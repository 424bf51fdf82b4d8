//! Host-name TARGETs: at most one lookup in flight per worker, its answer reused briefly.
//!
//! systemd-socket-proxyd resolves the host again for every connection. getaddrinfo(3)
//! blocks, so here each lookup runs on a thread of its own; done per connection, that
//! made churn through `localhost:PORT` 4.5x slower than through `127.0.0.1:PORT` and
//! spawned a thread per connection. Reusing an answer for [`ANSWER_TTL`] still follows
//! an address change within a second, while a busy worker makes one lookup a second.
//! Connections that arrive during a lookup wait for it rather than start their own, and
//! failures are reused too, so a name that does not resolve cannot turn every new
//! connection into a thread.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How long a lookup's answer (or failure) serves new connections.
pub const ANSWER_TTL: Duration = Duration::from_secs(1);

/// Addresses in the resolver's order of preference, or why there are none (io::Error is
/// not Clone: its kind and message are kept).
type Answer = Result<Rc<[SocketAddr]>, (io::ErrorKind, String)>;

/// One worker's lookups of one host name.
#[derive(Default)]
pub struct Resolver {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    answer: Option<(Instant, Answer)>,
    looking_up: bool,
    /// How many lookups have ended, so a waiter knows its lookup did even when the next
    /// one has already started.
    ended: u64,
    /// Connections waiting for the lookup in flight.
    waiting: Vec<Waker>,
}

impl Resolver {
    /// The addresses of `host`, each with `port`. The same `host` and `port` on every call:
    /// the answer is not keyed.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Rc<[SocketAddr]>> {
        loop {
            if let Some(answer) = self.fresh_answer() {
                return to_result(answer);
            }
            if !self.state.borrow().looking_up {
                break;
            }
            self.lookup_finished().await;
        }
        let lookup = Lookup::start(self);
        let query = (host.to_owned(), port);
        let answer: Answer =
            match monoio::spawn_blocking(move || query.to_socket_addrs().map(Vec::from_iter)).await
            {
                Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs.into()),
                Ok(Ok(_)) => Err((
                    io::ErrorKind::NotFound,
                    format!("{host:?} has no addresses"),
                )),
                Ok(Err(e)) => Err((
                    e.kind(),
                    format!(
                        "failed to resolve {host:?}: {e} (check the host name in TARGET, and \
                         /etc/hosts or the DNS server in /etc/resolv.conf)"
                    ),
                )),
                Err(_) => Err((
                    io::ErrorKind::Interrupted,
                    format!("the lookup of {host:?} was cancelled"),
                )),
            };
        lookup.finish(answer.clone());
        to_result(answer)
    }

    fn fresh_answer(&self) -> Option<Answer> {
        match &self.state.borrow().answer {
            Some((at, answer)) if at.elapsed() < ANSWER_TTL => Some(answer.clone()),
            _ => None,
        }
    }

    /// Resolves once the lookup in flight has ended, with an answer or abandoned.
    async fn lookup_finished(&self) {
        let ended = self.state.borrow().ended;
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.ended != ended {
                return Poll::Ready(());
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// The lookup in flight. Dropped unfinished (its connection timed out or shut down), it
/// still hands over: a waiting connection then starts the next lookup.
struct Lookup<'a>(&'a Resolver);

impl<'a> Lookup<'a> {
    fn start(resolver: &'a Resolver) -> Lookup<'a> {
        resolver.state.borrow_mut().looking_up = true;
        Lookup(resolver)
    }

    fn finish(self, answer: Answer) {
        self.0.state.borrow_mut().answer = Some((Instant::now(), answer));
    }
}

impl Drop for Lookup<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.0.state.borrow_mut();
            state.looking_up = false;
            state.ended += 1;
            std::mem::take(&mut state.waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }
}

fn to_result(answer: Answer) -> io::Result<Rc<[SocketAddr]>> {
    answer.map_err(|(kind, message)| io::Error::new(kind, Unresolved(message)))
}

/// A lookup that gave no address, so the metrics can tell it from a connect that
/// failed (its kind alone cannot: "no addresses" is NotFound, as a missing socket path).
#[derive(Debug)]
struct Unresolved(String);

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unresolved {}

/// Whether `e` is a host-name lookup that failed, rather than a connect.
pub fn is_resolve_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unresolved>())
}
