//! Credentials that passed a slow check lately, so that a client sending the same ones on
//! every request pays the check once a minute, not every time.
//!
//! Keyed by HMAC-SHA256 of `user:password` under a secret drawn at start: the table
//! never holds a password, and its keys are useless in another process. Whoever can read
//! this process's memory could test guesses against them at HMAC speed rather than
//! bcrypt's, but would see the `Authorization` headers themselves in the receive buffers.
//! Each entry carries the generation of the file it was checked against and counts only
//! while that file is the one in force, so a reload lets no old password through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sync::lock;

/// How long a good check counts: an aptly client's burst (upload, add, publish) pays one
/// check; a password removed from the file stops working at the reload, whatever this is.
pub const TTL: Duration = Duration::from_secs(60);

/// Entries kept. Only a right password makes one, so a file of N users needs N per
/// reload; the bound is for files of thousands.
pub const MAX_ENTRIES: usize = 1024;

pub type Key = [u8; 32];

pub struct Cache {
    /// As long as SHA-256's block: HMAC then takes it as it is.
    secret: [u8; 64],
    ttl: Duration,
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Keys in the order they were put in, which is also the order they expire in.
    order: VecDeque<(Key, Instant)>,
}

struct Entry {
    user: Arc<str>,
    expires: Instant,
    generation: u64,
}

impl Cache {
    /// `Err` only when the system has no random numbers to give.
    pub fn new(ttl: Duration, max: usize) -> Result<Cache, String> {
        let mut secret = [0; 64];
        getrandom::fill(&mut secret)
            .map_err(|e| format!("failed to draw a random key for the credentials cache: {e}"))?;
        Ok(Cache {
            secret,
            ttl,
            max: max.max(1),
            state: Mutex::new(State::default()),
        })
    }

    pub fn key(&self, user: &[u8], password: &[u8]) -> Key {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.secret.into());
        // Unambiguous: a user name holds no colon.
        mac.update(user);
        mac.update(b":");
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// The user whose credentials made `key`, if they passed against file `generation`
    /// within the TTL.
    pub fn get(&self, key: &Key, generation: u64, now: Instant) -> Option<Arc<str>> {
        let state = lock(&self.state);
        let entry = state.entries.get(key)?;
        (entry.generation == generation && now < entry.expires).then(|| entry.user.clone())
    }

    pub fn insert(&self, key: Key, user: Arc<str>, generation: u64, now: Instant) {
        let mut state = lock(&self.state);
        let expires = now + self.ttl;
        // The oldest go first: expired ones, then any past the bound.
        while let Some(&(old, at)) = state.order.front() {
            if at > now && state.order.len() < self.max {
                break;
            }
            state.order.pop_front();
            // Unless the key was put in again since, with a later expiry.
            if state.entries.get(&old).is_some_and(|e| e.expires == at) {
                state.entries.remove(&old);
            }
        }
        state.order.push_back((key, expires));
        state.entries.insert(
            key,
            Entry {
                user,
                expires,
                generation,
            },
        );
    }

    /// Forgets everything: at a reload, where no entry can count any more.
    pub fn clear(&self) {
        let mut state = lock(&self.state);
        state.entries.clear();
        state.order.clear();
    }

    /// Credentials cached now.
    pub fn entries(&self) -> usize {
        lock(&self.state).entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_user_password_and_process() {
        let cache = Cache::new(TTL, 4).unwrap();
        let key = cache.key(b"alice", b"secret");
        assert_eq!(key, cache.key(b"alice", b"secret"));
        assert_ne!(key, cache.key(b"alice", b"secreT"));
        assert_ne!(key, cache.key(b"alicesecret", b""));
        assert_ne!(key, Cache::new(TTL, 4).unwrap().key(b"alice", b"secret"));
    }

    #[test]
    fn entries_count_within_the_ttl_and_their_generation() {
        let cache = Cache::new(Duration::from_secs(60), 4).unwrap();
        let now = Instant::now();
        let key = cache.key(b"alice", b"secret");
        cache.insert(key, "alice".into(), 1, now);
        assert_eq!(cache.get(&key, 1, now).as_deref(), Some("alice"));
        let later = now + Duration::from_secs(59);
        assert!(cache.get(&key, 1, later).is_some());
        assert!(cache.get(&key, 2, now).is_none(), "another file");
        assert!(
            cache.get(&key, 1, now + Duration::from_secs(60)).is_none(),
            "expired"
        );
        cache.clear();
        assert!(cache.get(&key, 1, now).is_none() && cache.entries() == 0);
    }

    #[test]
    fn bounded_and_the_oldest_go_first() {
        let cache = Cache::new(Duration::from_secs(60), 3).unwrap();
        let now = Instant::now();
        let keys: Vec<Key> = (0..5u8).map(|i| cache.key(&[i], b"p")).collect();
        for (i, key) in keys.iter().enumerate() {
            let at = now + Duration::from_millis(i as u64);
            cache.insert(*key, "u".into(), 1, at);
            assert!(cache.entries() <= 3);
        }
        let at = now + Duration::from_millis(10);
        assert!(cache.get(&keys[0], 1, at).is_none() && cache.get(&keys[1], 1, at).is_none());
        assert!(keys[2..].iter().all(|k| cache.get(k, 1, at).is_some()));
        // Expired entries make room before live ones are dropped.
        let much_later = now + Duration::from_secs(61);
        cache.insert(keys[0], "u".into(), 1, much_later);
        assert_eq!(cache.entries(), 1);
        // Two checks of the same credentials at once both put them in: the entry
        // outlives the first record of it.
        let (k, a, b) = (keys[1], keys[2], keys[3]);
        let cache = Cache::new(Duration::from_secs(60), 3).unwrap();
        cache.insert(k, "u".into(), 1, now);
        cache.insert(k, "u".into(), 1, now + Duration::from_millis(1));
        cache.insert(a, "u".into(), 1, now + Duration::from_millis(2));
        cache.insert(b, "u".into(), 1, now + Duration::from_millis(3));
        let at = now + Duration::from_millis(4);
        assert!([k, a, b].iter().all(|key| cache.get(key, 1, at).is_some()));
        assert_eq!(lock(&cache.state).order.len(), 3);
    }
}
