//! HTTP Basic authentication for a route (`--route-auth PREFIX=FILE`): the front door of
//! an aptly host, whose API has no authentication of its own.
//!
//! A check reads the `Authorization` header on the worker, looks its credentials up in a
//! cache of recent good ones (cheap), and otherwise verifies them against the htpasswd
//! file on an I/O thread, never on a worker: bcrypt costs tens of ms of CPU. Failed
//! checks are limited per client range (429), and so are checks in flight (503), so the
//! door can be used neither to guess passwords quickly nor to burn the CPU.

mod cache;
mod hash;
pub mod header;
mod htpasswd;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admission::client::{Prefixes, RequestRate};
use crate::log::RateLimit;
use crate::metrics::{Exposition, Kind};
use crate::runtime::blocking;
use crate::sync::lock;
use cache::Cache;
pub use header::{www_authenticate, Credentials};
pub use htpasswd::Htpasswd;

/// Failed checks a client range may make: 10 at once, then one every 6 s. Enough for a
/// person who mistypes or a script retrying a stale password; an online guesser gets
/// 14,400 guesses a day per range, and a range can burn at most 10 checks of CPU a minute.
pub const FAILURES_PER_MINUTE: u32 = 10;

/// What a client range is for the failure count: one IPv4 address (a /24 would lock an
/// office's neighbours out behind one NAT), one IPv6 /64 (every host is given one, so
/// /128 would let one guesser take 2^64 turns).
const FAILURE_RANGES: Prefixes = Prefixes { ipv4: 32, ipv6: 64 };

/// Slow checks at once for an I/O pool of `io_threads`: a quarter of it, 1 to 8. Each
/// holds an I/O thread and a core for its tens of ms; more at once than a few per core
/// only queue for the CPU, and files must still find threads free.
pub fn checks_in_flight(io_threads: usize) -> usize {
    (io_threads / 4).clamp(1, 8)
}

/// What to answer a request for an authenticated route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Right credentials: serve the request (the user is for the access log).
    Allowed { user: Arc<str> },
    /// 401 with `WWW-Authenticate` ([`BasicAuth::challenge`]): no credentials, malformed
    /// ones, or wrong ones.
    Challenge,
    /// 429 with `Retry-After`: the client's range failed too often lately.
    TooMany { retry_after_secs: u64 },
    /// 503: as many checks as allowed are running already.
    Busy,
}

/// One htpasswd file and everything about checking against it; shared by all workers.
pub struct BasicAuth {
    path: PathBuf,
    challenge: String,
    file: Mutex<Arc<Loaded>>,
    cache: Cache,
    failures: RequestRate,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    counts: Counts,
}

/// The file in force, and which reading of it this is.
struct Loaded {
    users: Htpasswd,
    generation: u64,
}

/// For /metrics; too-many is `failures.limited`.
#[derive(Default)]
struct Counts {
    allowed: AtomicU64,
    cached: AtomicU64,
    refused: AtomicU64,
    busy: AtomicU64,
    reload_failures: AtomicU64,
}

/// How a slow check went.
enum Verdict {
    Right(Arc<str>),
    Wrong,
    Busy,
}

static TOO_MANY_LOG: RateLimit = RateLimit::new(Duration::from_secs(60));
static BUSY_LOG: RateLimit = RateLimit::new(Duration::from_secs(60));

impl BasicAuth {
    /// Reads the file at `path` (an error names it and the fix); `realm` is what a
    /// browser shows when it asks for a password; at most `max_in_flight` slow checks
    /// run at once (see [`checks_in_flight`]).
    pub fn new(path: &Path, realm: &str, max_in_flight: usize) -> Result<BasicAuth, String> {
        let challenge = www_authenticate(realm)?;
        let users = Htpasswd::load(path)?;
        log_warnings(&users);
        Ok(BasicAuth {
            path: path.to_owned(),
            challenge,
            file: Mutex::new(Arc::new(Loaded {
                users,
                generation: 0,
            })),
            cache: Cache::new(cache::TTL, cache::MAX_ENTRIES)?,
            failures: RequestRate::per_minute(FAILURES_PER_MINUTE, FAILURES_PER_MINUTE),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: max_in_flight.max(1),
            counts: Counts::default(),
        })
    }

    /// The `WWW-Authenticate` value for a 401.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// Checks a request's `Authorization` value (`None` when it has none) from `client`
    /// (`None` for a Unix-socket client, which no failure limit applies to).
    pub async fn check(&self, header: Option<&[u8]>, client: Option<IpAddr>) -> AuthOutcome {
        let Some(Credentials { user, password }) = header.and_then(header::parse_basic) else {
            return AuthOutcome::Challenge;
        };
        let file = lock(&self.file).clone();
        let key = self.cache.key(&user, &password);
        if let Some(user) = self.cache.get(&key, file.generation, Instant::now()) {
            self.counts.cached.fetch_add(1, Ordering::Relaxed);
            return AuthOutcome::Allowed { user };
        }
        // A token is taken before the check and given back if it was right, so that
        // checks running at once cannot go past the limit together.
        let range = client.map(|ip| FAILURE_RANGES.key(ip));
        if let Some(range) = range {
            if let Err(retry_after_secs) = self.failures.allow(range) {
                crate::warn_limited!(
                    TOO_MANY_LOG,
                    "over {FAILURES_PER_MINUTE} failed passwords a minute from the range of \
                     {}: answering 429",
                    client.map_or_else(String::new, |ip| ip.to_string())
                );
                return AuthOutcome::TooMany { retry_after_secs };
            }
        }
        let generation = file.generation;
        let verdict = self.verify(file, user, password).await;
        if let (Some(range), Verdict::Right(_) | Verdict::Busy) = (range, &verdict) {
            self.failures.give_back(range);
        }
        match verdict {
            Verdict::Right(user) => {
                self.cache
                    .insert(key, user.clone(), generation, Instant::now());
                self.counts.allowed.fetch_add(1, Ordering::Relaxed);
                AuthOutcome::Allowed { user }
            }
            Verdict::Wrong => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                AuthOutcome::Challenge
            }
            Verdict::Busy => {
                self.counts.busy.fetch_add(1, Ordering::Relaxed);
                AuthOutcome::Busy
            }
        }
    }

    /// The slow part, on an I/O thread, if one of the `max_in_flight` places is free.
    async fn verify(&self, file: Arc<Loaded>, user: Vec<u8>, password: Vec<u8>) -> Verdict {
        let Some(place) = Place::take(&self.in_flight, self.max_in_flight) else {
            crate::warn_limited!(
                BUSY_LOG,
                "password checks at their bound ({} at once): answering 503",
                self.max_in_flight
            );
            return Verdict::Busy;
        };
        let ran = blocking::run(move || {
            // Held until the hash is done, even if the request is gone by then.
            let _place = place;
            if !file.users.verify(&user, &password) {
                return None;
            }
            // Right, so the name is one of the file's, which is UTF-8.
            Some(Arc::from(String::from_utf8_lossy(&user)))
        })
        .await;
        match ran {
            Ok(Some(user)) => Verdict::Right(user),
            Ok(None) => Verdict::Wrong,
            Err(e) => {
                crate::warn_limited!(BUSY_LOG, "failed to check a password: {e}");
                Verdict::Busy
            }
        }
    }

    /// Reads the file again (at SIGHUP). One that cannot be read or parsed leaves the
    /// one in force as it is; either way the outcome is logged here, and returned.
    /// Reads a file: call it where blocking is allowed, not on a worker.
    pub fn reload(&self) -> Result<(), String> {
        let users = match Htpasswd::load(&self.path) {
            Ok(users) => users,
            Err(why) => {
                self.counts.reload_failures.fetch_add(1, Ordering::Relaxed);
                crate::warn!(
                    "kept the users read before from {}: {why}",
                    self.path.display()
                );
                return Err(why);
            }
        };
        log_warnings(&users);
        let count = users.len();
        {
            let mut file = lock(&self.file);
            let generation = file.generation + 1;
            *file = Arc::new(Loaded { users, generation });
        }
        // Entries of the file before could not count any more; they only take room.
        self.cache.clear();
        crate::info!("{}: {count} users in force", self.path.display());
        Ok(())
    }

    #[cfg(test)]
    fn hashed(&self) -> u64 {
        lock(&self.file).users.hashed()
    }
}

fn log_warnings(users: &Htpasswd) {
    for warning in &users.warnings {
        crate::warn!("{warning}");
    }
}

/// One of the places for a slow check; given back when dropped.
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Place(count.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The families of every `--route-auth` file, one sample per file and outcome.
pub fn render(auths: &[Arc<BasicAuth>], out: &mut Exposition) {
    if auths.is_empty() {
        return;
    }
    let files: Vec<String> = auths
        .iter()
        .map(|a| label_value(&a.path.display().to_string()))
        .collect();
    let mut checks = Vec::new();
    for (auth, file) in auths.iter().zip(&files) {
        let c = &auth.counts;
        for (result, n) in [
            ("allowed", &c.allowed),
            ("cached", &c.cached),
            ("refused", &c.refused),
            ("rate_limited", &auth.failures.limited),
            ("busy", &c.busy),
        ] {
            let labels = format!("{{file=\"{file}\",result=\"{result}\"}}");
            checks.push((labels, n.load(Ordering::Relaxed)));
        }
    }
    family(
        out,
        "ringsock_auth_checks_total",
        Kind::Counter,
        "Requests with credentials for an authenticated route, by outcome: allowed \
         (verified), cached (allowed by a check within the last minute), refused (401), \
         rate_limited (429: 10 failures a minute from the client's /32 or /64), busy (503: \
         the password checks in flight were at their bound).",
        &checks,
    );
    type Value = fn(&BasicAuth) -> u64;
    let per_file: [(&str, Kind, &str, Value); 3] = [
        (
            "ringsock_auth_users",
            Kind::Gauge,
            "Users in the --route-auth file in force.",
            |a| lock(&a.file).users.len() as u64,
        ),
        (
            "ringsock_auth_cached_credentials",
            Kind::Gauge,
            "Credentials allowed within the last minute, which pass without a new check.",
            |a| a.cache.entries() as u64,
        ),
        (
            "ringsock_auth_reload_failures_total",
            Kind::Counter,
            "Reloads that kept the file in force because the new one could not be read.",
            |a| a.counts.reload_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in per_file {
        let samples: Vec<(String, u64)> = auths
            .iter()
            .zip(&files)
            .map(|(a, file)| (format!("{{file=\"{file}\"}}"), value(a)))
            .collect();
        family(out, name, kind, help, &samples);
    }
}

fn family(out: &mut Exposition, name: &str, kind: Kind, help: &str, samples: &[(String, u64)]) {
    let samples: Vec<(&str, u64)> = samples.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    out.family(name, kind, help, &samples);
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}
