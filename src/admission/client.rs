//! Who a connection is from and whether it may stay: the PROXY header of a trusted
//! balancer first (so the real client is the one limited), then `--per-client-connections`,
//! at most N connections at once per client prefix (/32 and /128 by default; USTC's
//! mirror uses /29 and /64). Shared by `proxy` and `serve`; `serve` also limits each
//! prefix's request rate (`--per-client-rate`, a token bucket).
//!
//! One table for the whole process, sharded by prefix so workers rarely meet on a lock:
//! a limit is exact however the kernel spreads a client's connections over workers. A
//! prefix is in the table only while it has a connection open, so the table never holds
//! more entries than there are connections, whatever a flood of addresses does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::proxy_header::{self, Origin, TrustedPeers};
use crate::metrics::Exposition;
use crate::net::Stream;
use crate::sync::lock;

const SHARDS: usize = 16;

/// What every accepted connection is checked against.
#[derive(Debug, Default)]
pub struct ClientRules {
    pub trusted: TrustedPeers,
    pub prefixes: Prefixes,
    pub per_client: Option<PerClient>,
    pub rate: Option<RequestRate>,
    /// Connections closed for a missing, malformed or slow PROXY header.
    pub header_refused: AtomicU64,
}

/// Whether a listener's connections start with a PROXY header: decided per listener at
/// start (`--proxy-protocol-on NAME`), else per peer (`--proxy-protocol-from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRule {
    /// Every connection, whoever the peer.
    Required,
    /// Connections from `--proxy-protocol-from` peers.
    FromTrusted,
}

/// What makes one client: an address masked to these lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for Prefixes {
    fn default() -> Prefixes {
        Prefixes {
            ipv4: 32,
            ipv6: 128,
        }
    }
}

impl Prefixes {
    /// The client's prefix as one number: IPv4 as its IPv4-mapped IPv6 form, masked.
    pub fn key(self, ip: IpAddr) -> u128 {
        let (bits, keep) = match ip.to_canonical() {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + u32::from(self.ipv4)),
            IpAddr::V6(v6) => (u128::from(v6), u32::from(self.ipv6)),
        };
        bits & u128::MAX.checked_shl(128 - keep).unwrap_or(0)
    }
}

/// An admitted connection: who it is from, and its place in the per-client count.
pub struct Client {
    pub origin: Origin,
    /// Its prefix, when it has an address and some per-client rule applies.
    key: Option<u128>,
    _slot: Option<ClientSlot>,
}

impl ClientRules {
    /// Reads a trusted balancer's header, then takes a per-client slot. `Err` says why
    /// the connection is to be closed (already counted).
    pub async fn admit(
        self: &Arc<Self>,
        stream: &Stream,
        header: HeaderRule,
    ) -> Result<Client, &'static str> {
        let origin = match header {
            HeaderRule::Required => proxy_header::read(stream).await,
            HeaderRule::FromTrusted => proxy_header::receive(stream, &self.trusted).await,
        };
        if origin.is_err() {
            self.header_refused.fetch_add(1, Ordering::Relaxed);
        }
        let origin = origin?;
        let unlimited = Client {
            origin,
            key: None,
            _slot: None,
        };
        if self.per_client.is_none() && self.rate.is_none() {
            return Ok(unlimited);
        }
        let ip = match origin {
            Origin::Client(addr) => Some(addr.ip()),
            Origin::Direct | Origin::Balancer => crate::sys::peer_ip(stream.as_raw_fd()),
        };
        // A Unix-socket client has no address to limit.
        let Some(ip) = ip else {
            return Ok(unlimited);
        };
        let key = self.prefixes.key(ip);
        let slot =
            match &self.per_client {
                None => None,
                Some(limit) => Some(limit.take(self, key).ok_or(
                    "too many connections from its address range (--per-client-connections)",
                )?),
            };
        Ok(Client {
            origin,
            key: Some(key),
            _slot: slot,
        })
    }

    /// What admission refused, for `/metrics` (both subcommands).
    pub fn render(&self, out: &mut Exposition) {
        out.counter(
            "ringsock_proxy_protocol_refused_total",
            "Connections closed for a missing, malformed or slow PROXY header \
             (--proxy-protocol-from, --proxy-protocol-on).",
            self.header_refused.load(Ordering::Relaxed),
        );
        if let Some(limit) = &self.per_client {
            out.counter(
                "ringsock_per_client_refused_total",
                "Connections closed at accept: their client's address range had \
                 --per-client-connections open.",
                limit.refused.load(Ordering::Relaxed),
            );
            out.gauge(
                "ringsock_per_client_ranges",
                "Client address ranges with a connection open.",
                limit.tracked() as u64,
            );
        }
        if let Some(rate) = &self.rate {
            out.counter(
                "ringsock_per_client_rate_limited_total",
                "Requests answered 429: their client was over --per-client-rate.",
                rate.limited.load(Ordering::Relaxed),
            );
        }
    }

    /// Whether `client` may have one more request answered now; else how many seconds
    /// until it may (for `Retry-After`).
    pub fn allow_request(&self, client: &Client) -> Result<(), u64> {
        match (&self.rate, client.key) {
            (Some(rate), Some(key)) => rate.allow(key),
            _ => Ok(()),
        }
    }
}

/// `--per-client-rate` with `--per-client-burst`: a token bucket per client prefix.
#[derive(Debug)]
pub struct RequestRate {
    per_second: f64,
    burst: f64,
    shards: [Mutex<HashMap<u128, Bucket>>; SHARDS],
    pub limited: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept per shard; past it, full buckets (clients that have been quiet long
/// enough to be owed nothing) are dropped, and if none is, a new client goes unlimited
/// rather than the table growing: a flood of addresses cannot take the memory.
const BUCKETS_PER_SHARD: usize = 4096;

impl RequestRate {
    pub fn new(per_second: u32, burst: u32) -> RequestRate {
        RequestRate {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            limited: AtomicU64::new(0),
        }
    }

    /// A bucket that earns `per_minute` tokens a minute: for limits slower than one a
    /// second, such as failed passwords.
    pub fn per_minute(per_minute: u32, burst: u32) -> RequestRate {
        RequestRate {
            per_second: f64::from(per_minute) / 60.0,
            ..RequestRate::new(0, burst)
        }
    }

    /// Takes a token from `key`'s bucket; else how many seconds until one is earned
    /// (for `Retry-After`).
    pub fn allow(&self, key: u128) -> Result<(), u64> {
        let now = Instant::now();
        let mut shard = lock(&self.shards[shard_of(key)]);
        if shard.len() >= BUCKETS_PER_SHARD && !shard.contains_key(&key) {
            shard.retain(|_, b| self.refilled(b, now) < self.burst);
            if shard.len() >= BUCKETS_PER_SHARD {
                return Ok(());
            }
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        // At one token a second or more this is always 1.
        let wait = ((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64;
        drop(shard);
        self.limited.fetch_add(1, Ordering::Relaxed);
        Err(wait)
    }

    /// Returns a token taken by [`RequestRate::allow`] for something that turned out not
    /// to count (a password that was right), up to the burst.
    pub fn give_back(&self, key: u128) {
        if let Some(bucket) = lock(&self.shards[shard_of(key)]).get_mut(&key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let earned = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        (bucket.tokens + earned).min(self.burst)
    }
}

fn shard_of(key: u128) -> usize {
    let hash = (key ^ (key >> 64)) as u64;
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// `--per-client-connections` and its table.
#[derive(Debug)]
pub struct PerClient {
    max: u32,
    shards: [Mutex<HashMap<u128, u32>>; SHARDS],
    pub refused: AtomicU64,
}

impl PerClient {
    pub fn new(max: u32) -> PerClient {
        PerClient {
            max,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: AtomicU64::new(0),
        }
    }

    /// Prefixes with a connection open now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u32>> {
        &self.shards[shard_of(key)]
    }

    fn take(&self, rules: &Arc<ClientRules>, key: u128) -> Option<ClientSlot> {
        let mut shard = lock(self.shard(key));
        let open = shard.entry(key).or_insert(0);
        if *open >= self.max {
            drop(shard);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            rules: rules.clone(),
            key,
        })
    }

    fn give_back(&self, key: u128) {
        let mut shard = lock(self.shard(key));
        if let Some(open) = shard.get_mut(&key) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&key);
            }
        }
    }
}

/// One connection's share of its prefix's count, given back when it ends.
struct ClientSlot {
    rules: Arc<ClientRules>,
    key: u128,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(limit) = &self.rules.per_client {
            limit.give_back(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max: u32, ipv4: u8, ipv6: u8) -> Arc<ClientRules> {
        Arc::new(ClientRules {
            prefixes: Prefixes { ipv4, ipv6 },
            per_client: Some(PerClient::new(max)),
            ..ClientRules::default()
        })
    }

    fn take(rules: &Arc<ClientRules>, ip: &str) -> Option<ClientSlot> {
        let key = rules.prefixes.key(ip.parse().unwrap());
        rules.per_client.as_ref().unwrap().take(rules, key)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = RequestRate::new(1000, 5);
        let key = Prefixes::default().key("192.0.2.1".parse().unwrap());
        for _ in 0..5 {
            assert_eq!(rate.allow(key), Ok(()));
        }
        assert_eq!(rate.allow(key), Err(1), "the burst is spent");
        assert_eq!(
            rate.allow(key + 1),
            Ok(()),
            "another client has its own bucket"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(rate.allow(key), Ok(()), "1,000/s earns a token in 1 ms");
        assert_eq!(rate.limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_slow_bucket_says_when_and_takes_tokens_back() {
        let rate = RequestRate::per_minute(10, 2);
        assert_eq!(rate.allow(7), Ok(()));
        assert_eq!(rate.allow(7), Ok(()));
        // 10 a minute: the next token is 6 s away.
        assert_eq!(rate.allow(7), Err(6));
        rate.give_back(7);
        assert_eq!(rate.allow(7), Ok(()), "a token given back is there to take");
        rate.give_back(7);
        rate.give_back(7);
        rate.give_back(7);
        assert_eq!(rate.allow(7), Ok(()));
        assert_eq!(rate.allow(7), Ok(()));
        assert!(
            rate.allow(7).is_err(),
            "giving back never exceeds the burst"
        );
        rate.give_back(8);
        assert_eq!(rate.limited.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rate_buckets_are_bounded() {
        let rate = RequestRate::new(1, 1);
        for i in 0..(BUCKETS_PER_SHARD * SHARDS * 2) as u128 {
            let _ = rate.allow(i << 64);
        }
        let kept: usize = rate.shards.iter().map(|s| lock(s).len()).sum();
        assert!(kept <= BUCKETS_PER_SHARD * SHARDS, "{kept}");
    }

    #[test]
    fn a_prefix_gets_at_most_max_and_its_slots_come_back() {
        let rules = rules(2, 29, 64);
        let a = take(&rules, "192.0.2.1").unwrap();
        let _b = take(&rules, "192.0.2.6").unwrap();
        assert!(take(&rules, "192.0.2.7").is_none(), "same /29");
        assert!(
            take(&rules, "::ffff:192.0.2.3").is_none(),
            "IPv4-mapped is the same client"
        );
        assert!(take(&rules, "192.0.2.8").is_some(), "the next /29");
        drop(a);
        assert!(take(&rules, "192.0.2.7").is_some());
        let _c = take(&rules, "2001:db8:1:2::1").unwrap();
        let _d = take(&rules, "2001:db8:1:2:ffff::9").unwrap();
        assert!(take(&rules, "2001:db8:1:2::77").is_none(), "same /64");
        assert_eq!(
            rules
                .per_client
                .as_ref()
                .unwrap()
                .refused
                .load(Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn the_table_holds_only_prefixes_with_connections() {
        let rules = rules(1, 32, 128);
        let slots: Vec<_> = (0..1000u32)
            .map(|i| {
                take(
                    &rules,
                    &std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(rules.per_client.as_ref().unwrap().tracked(), 1000);
        drop(slots);
        assert_eq!(rules.per_client.as_ref().unwrap().tracked(), 0);
    }
}
