//! Who a connection is from and whether it may stay: the PROXY header of a trusted
//! balancer first (so the real client is the one limited), then `--per-client-connections`,
//! at most N connections at once per client prefix (/32 and /128 by default; USTC's
//! mirror uses /29 and /64). Shared by `proxy` and `serve`.
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

use super::proxy_header::{self, Origin, TrustedPeers};
use super::Stream;
use crate::runtime::shutdown::lock;

const SHARDS: usize = 16;

/// What every accepted connection is checked against.
#[derive(Debug, Default)]
pub struct ClientRules {
    pub trusted: TrustedPeers,
    pub per_client: Option<PerClient>,
}

/// An admitted connection: who it is from, and its place in the per-client count.
pub struct Client {
    pub origin: Origin,
    _slot: Option<ClientSlot>,
}

impl ClientRules {
    /// Reads a trusted balancer's header, then takes a per-client slot. `Err` says why
    /// the connection is to be closed (already counted).
    pub async fn admit(self: &Arc<Self>, stream: &Stream) -> Result<Client, &'static str> {
        let origin = proxy_header::receive(stream, &self.trusted).await?;
        let Some(limit) = &self.per_client else {
            return Ok(Client {
                origin,
                _slot: None,
            });
        };
        let ip = match origin {
            Origin::Client(addr) => Some(addr.ip()),
            Origin::Direct | Origin::Balancer => crate::sys::peer_ip(stream.as_raw_fd()),
        };
        // A Unix-socket client has no address to limit.
        let Some(ip) = ip else {
            return Ok(Client {
                origin,
                _slot: None,
            });
        };
        match limit.take(self, ip) {
            Some(slot) => Ok(Client {
                origin,
                _slot: Some(slot),
            }),
            None => Err("too many connections from its address range (--per-client-connections)"),
        }
    }
}

/// `--per-client-connections` and its table.
#[derive(Debug)]
pub struct PerClient {
    max: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    shards: [Mutex<HashMap<u128, u32>>; SHARDS],
    pub refused: AtomicU64,
}

impl PerClient {
    pub fn new(max: u32, ipv4_prefix: u8, ipv6_prefix: u8) -> PerClient {
        PerClient {
            max,
            ipv4_prefix,
            ipv6_prefix,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: AtomicU64::new(0),
        }
    }

    /// Prefixes with a connection open now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// The client's prefix as one number: IPv4 as its IPv4-mapped IPv6 form, masked.
    fn key(&self, ip: IpAddr) -> u128 {
        let (bits, keep) = match ip {
            IpAddr::V4(v4) => (
                u128::from(v4.to_ipv6_mapped()),
                96 + u32::from(self.ipv4_prefix),
            ),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (
                    u128::from(v4.to_ipv6_mapped()),
                    96 + u32::from(self.ipv4_prefix),
                ),
                None => (u128::from(v6), u32::from(self.ipv6_prefix)),
            },
        };
        bits & u128::MAX.checked_shl(128 - keep).unwrap_or(0)
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u32>> {
        let hash = (key ^ (key >> 64)) as u64;
        &self.shards[(hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    fn take(&self, rules: &Arc<ClientRules>, ip: IpAddr) -> Option<ClientSlot> {
        let key = self.key(ip);
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

    fn rules(max: u32, v4: u8, v6: u8) -> Arc<ClientRules> {
        Arc::new(ClientRules {
            trusted: TrustedPeers::default(),
            per_client: Some(PerClient::new(max, v4, v6)),
        })
    }

    fn take(rules: &Arc<ClientRules>, ip: &str) -> Option<ClientSlot> {
        rules
            .per_client
            .as_ref()
            .unwrap()
            .take(rules, ip.parse().unwrap())
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
