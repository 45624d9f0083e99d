//! The memory backend: one store for all worker threads of a proxy, in shards, each an
//! LRU map under its own lock. Bounded by bytes: when a shard is over its share,
//! expired keys go first, then the least recently used, and those evictions are counted.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::gcra;
use super::{StateCounters, StateError};

/// Shards (locks); a power of two.
const SHARDS: usize = 64;

/// What an entry costs besides its key and value bytes: the LRU node (key and value
/// handles, links, expiry), its map slot at the map's lowest load, and the allocator's
/// rounding of the two heap blocks. Measured against RSS by the state tests.
const ENTRY_OVERHEAD: usize = 160;

/// A shard over budget sweeps all its expired keys at most this often; in between it
/// evicts by recency alone.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Value {
    Bytes(Box<[u8]>),
    /// A counter, read back as decimal text like Redis does.
    Int(i64),
}

impl Value {
    fn len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Int(_) => 8,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Value::Bytes(b) => b.to_vec(),
            Value::Int(i) => i.to_string().into_bytes(),
        }
    }

    fn equals(&self, bytes: &[u8]) -> bool {
        match self {
            Value::Bytes(b) => **b == *bytes,
            Value::Int(i) => i.to_string().as_bytes() == bytes,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        }
    }
}

struct Entry {
    value: Value,
    /// Microseconds on the store's clock.
    expires_us: Option<u64>,
}

impl Entry {
    fn live(&self, now_us: u64) -> bool {
        self.expires_us.is_none_or(|t| t > now_us)
    }

    fn cost(&self, key: &str) -> usize {
        key.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

struct Shard {
    map: LruCache<Box<str>, Entry>,
    bytes: usize,
    /// Entries with an expiry (a sweep has nothing to find without them).
    expiring: usize,
    last_sweep_us: u64,
}

impl Shard {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.pop(key)?;
        self.forget(key, &entry);
        Some(entry)
    }

    fn forget(&mut self, key: &str, entry: &Entry) {
        self.bytes = self.bytes.saturating_sub(entry.cost(key));
        if entry.expires_us.is_some() {
            self.expiring = self.expiring.saturating_sub(1);
        }
    }

    fn insert(&mut self, key: Box<str>, entry: Entry) {
        self.bytes += entry.cost(&key);
        if entry.expires_us.is_some() {
            self.expiring += 1;
        }
        if let Some((old_key, old)) = self.map.push(key, entry) {
            self.forget(&old_key, &old);
        }
    }

    /// The live entry under `key`, marked as used; an expired one is dropped.
    fn live(&mut self, key: &str, now_us: u64) -> Option<&mut Entry> {
        let expired = !self.map.peek(key)?.live(now_us);
        if expired {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    fn sweep(&mut self, now_us: u64) {
        self.last_sweep_us = now_us;
        if self.expiring == 0 {
            return;
        }
        let expired: Vec<Box<str>> = self
            .map
            .iter()
            .filter(|(_, e)| !e.live(now_us))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }

    /// Brings the shard within `budget`: expired keys first, then by recency.
    fn shrink(&mut self, budget: usize, now_us: u64, evictions: &Counter) {
        if self.bytes <= budget {
            return;
        }
        if now_us.saturating_sub(self.last_sweep_us) >= SWEEP_EVERY.as_micros() as u64 {
            self.sweep(now_us);
        }
        while self.bytes > budget {
            let Some((key, entry)) = self.map.pop_lru() else {
                break;
            };
            self.forget(&key, &entry);
            if entry.live(now_us) {
                evictions.inc();
            }
        }
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_budget: usize,
    epoch: Instant,
    counters: Arc<StateCounters>,
}

impl MemoryStore {
    pub fn new(max_bytes: usize, counters: Arc<StateCounters>) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: LruCache::unbounded(),
                    bytes: 0,
                    expiring: 0,
                    last_sweep_us: 0,
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            shard_budget: (max_bytes / SHARDS).max(1),
            epoch: Instant::now(),
            counters,
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn index(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize & (SHARDS - 1)
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A poisoned shard still holds consistent entries (no panics mid-update).
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn expiry(&self, now_us: u64, ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|ttl| now_us.saturating_add(ttl.as_micros() as u64))
    }

    /// Runs `f` on the shard of `key`, then brings the shard back within budget and
    /// the memory gauge up to date.
    fn with_shard<T>(&self, index: usize, f: impl FnOnce(&mut Shard, u64) -> T) -> T {
        let now = self.now_us();
        let mut shard = self.lock(index);
        let before = shard.bytes;
        let out = f(&mut shard, now);
        shard.shrink(self.shard_budget, now, &self.counters.evictions);
        self.counters
            .memory_bytes
            .inc_by(shard.bytes as i64 - before as i64);
        out
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with_shard(self.index(key), |shard, now| {
            shard.live(key, now).map(|e| e.value.to_bytes())
        })
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) {
        self.with_shard(self.index(&key), |shard, now| {
            let entry = Entry {
                value: Value::Bytes(value.into_boxed_slice()),
                expires_us: self.expiry(now, ttl),
            };
            shard.insert(key.into_boxed_str(), entry);
        })
    }

    pub fn delete(&self, key: &str) -> bool {
        self.with_shard(self.index(key), |shard, now| {
            shard.remove(key).is_some_and(|entry| entry.live(now))
        })
    }

    pub fn compare_and_swap(
        &self,
        key: String,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> bool {
        self.with_shard(self.index(&key), |shard, now| {
            let matches = match (shard.live(&key, now), expected) {
                (None, None) => true,
                (Some(current), Some(expected)) => current.value.equals(expected),
                _ => false,
            };
            if matches {
                let entry = Entry {
                    value: Value::Bytes(value.into_boxed_slice()),
                    expires_us: self.expiry(now, ttl),
                };
                shard.insert(key.into_boxed_str(), entry);
            }
            matches
        })
    }

    pub fn increment(
        &self,
        key: String,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StateError> {
        self.with_shard(self.index(&key), |shard, now| {
            let current = match shard.live(&key, now) {
                Some(entry) => Some(entry.value.as_int().ok_or_else(|| {
                    StateError::Invalid("increment on a value that is not an integer".into())
                })?),
                None => None,
            };
            let next = current
                .unwrap_or(0)
                .checked_add(delta)
                .ok_or_else(|| StateError::Invalid("increment overflows".into()))?;
            // An existing key keeps the expiry it was created with (fixed windows).
            let expires_us = match current {
                Some(_) => shard.map.peek(key.as_str()).and_then(|e| e.expires_us),
                None => self.expiry(now, ttl),
            };
            let entry = Entry {
                value: Value::Int(next),
                expires_us,
            };
            shard.insert(key.into_boxed_str(), entry);
            Ok(next)
        })
    }

    pub fn rate_limit(&self, key: String, cell: &gcra::Cell) -> gcra::Outcome {
        self.with_shard(self.index(&key), |shard, now| {
            let tat = shard
                .live(&key, now)
                .and_then(|e| e.value.as_int())
                .map(|t| t as u64);
            let outcome = gcra::decide(*cell, tat, now);
            if let Some(new_tat) = outcome.new_tat_us {
                // Once its TAT has passed the cell is idle again and worth nothing.
                let entry = Entry {
                    value: Value::Int(new_tat as i64),
                    expires_us: Some(new_tat),
                };
                shard.insert(key.into_boxed_str(), entry);
            }
            outcome
        })
    }

    /// Drops expired keys from every shard (called now and then, off the request path).
    pub fn sweep(&self) {
        for index in 0..SHARDS {
            let now = self.now_us();
            let mut shard = self.lock(index);
            let before = shard.bytes;
            shard.sweep(now);
            self.counters
                .memory_bytes
                .inc_by(shard.bytes as i64 - before as i64);
        }
    }

    /// Keys held now, expired or not.
    pub fn key_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}
