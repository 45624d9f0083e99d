//! A zone: stored responses in memory within a byte budget, least recently used
//! first out, and the fills running for its keys (one per key: request coalescing).
//!
//! Entries are kept by URL (`scheme://host/target`); the variants of one URL (by a
//! route's added key parts and by the response's `Vary`) sit together, so that a URL
//! is invalidated or purged in one step. A lock is held only to find or place an
//! `Arc<Entry>`: a client reading a stored body holds none.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::HeaderMap;
use lru::LruCache;
use tokio::sync::watch;

use crate::disk::DiskTier;
use crate::entry::Entry;
use crate::metrics::{CacheCounters, ZoneCounters};
use sluice_config::CacheZoneConfig;

const SHARDS: usize = 16;
/// Variants kept per URL (by added key parts and `Vary`); the oldest goes first.
pub const MAX_VARIANTS: usize = 32;

struct Variant {
    /// The route's added key parts (empty without any).
    extra: Box<str>,
    entry: Arc<Entry>,
    weight: usize,
}

#[derive(Default)]
struct Variants(Vec<Variant>);

impl Variants {
    fn weight(&self) -> usize {
        self.0.iter().map(|v| v.weight).sum()
    }
}

struct Shard {
    lru: LruCache<Box<str>, Variants>,
    bytes: usize,
}

pub struct Zone {
    pub name: Arc<str>,
    pub config: CacheZoneConfig,
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    pub max_object: usize,
    pub counters: ZoneCounters,
    fills: Mutex<HashMap<Box<str>, watch::Receiver<()>>>,
    hasher: std::collections::hash_map::RandomState,
    /// The disk tier, with `disk_dir`.
    pub disk: Option<Arc<DiskTier>>,
}

/// What a lookup found.
pub enum Lookup {
    Found(Arc<Entry>),
    /// Nothing stored for the URL.
    UriMiss,
    /// Responses stored for the URL, none selected by this request.
    VaryMiss,
}

/// A key's fill, claimed by one request: others wait for it or give up after their
/// bound. Dropping it (stored or not) wakes them.
pub struct FillPermit {
    zone: Arc<Zone>,
    key: Box<str>,
    _done: watch::Sender<()>,
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        lock(&self.zone.fills).remove(&self.key);
    }
}

/// The result of claiming a key's fill.
pub enum Claim {
    /// This request fills; the others wait.
    Fill(FillPermit),
    /// Another request is filling: wait for it (bounded), then look again.
    Wait(watch::Receiver<()>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data here (plain map updates).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Zone {
    pub fn new(
        name: &str,
        config: &CacheZoneConfig,
        counters: &CacheCounters,
    ) -> std::io::Result<Arc<Zone>> {
        let disk = match &config.disk_dir {
            Some(dir) => Some(Arc::new(DiskTier::open(
                dir,
                config.disk_max_mib.unwrap_or(1024),
            )?)),
            None => None,
        };
        let budget = (config.max_mib as usize) << 20;
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        Ok(Arc::new(Zone {
            name: Arc::from(name),
            config: config.clone(),
            shards,
            shard_budget: budget / SHARDS,
            max_object: config.max_object_bytes().min(budget / SHARDS),
            counters: counters.zone(name),
            fills: Mutex::new(HashMap::new()),
            hasher: Default::default(),
            disk,
        }))
    }

    fn shard(&self, url: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(url) as usize % SHARDS]
    }

    /// The stored response for a URL, its added key parts and the request's fields.
    pub fn lookup(&self, url: &str, extra: &str, request: &HeaderMap) -> Lookup {
        let mut shard = lock(self.shard(url));
        let Some(variants) = shard.lru.get(url) else {
            return Lookup::UriMiss;
        };
        // The newest matching variant wins (§4.1).
        match variants
            .0
            .iter()
            .rev()
            .find(|v| &*v.extra == extra && v.entry.matches(request))
        {
            Some(v) => Lookup::Found(v.entry.clone()),
            None => Lookup::VaryMiss,
        }
    }

    /// Stores an entry (replacing the variant it selects the same way), and writes it
    /// to the disk tier; false when it is too large for the zone.
    pub fn insert(&self, url: &str, extra: &str, entry: Arc<Entry>) -> bool {
        if !self.insert_in_memory(url, extra, entry.clone()) {
            return false;
        }
        if let Some(disk) = &self.disk {
            disk.write(url, extra, entry);
        }
        true
    }

    /// Reads a key's file from the disk tier (blocking) and keeps it in memory when
    /// the request selects it.
    pub fn read_disk(&self, url: &str, extra: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let disk = self.disk.as_ref()?;
        let id = crate::disk::file_id(url, extra);
        if !disk.has(&id) {
            return None;
        }
        let entry = Arc::new(disk.read(&id, url, extra)?);
        if !entry.matches(request) {
            return None;
        }
        self.insert_in_memory(url, extra, entry.clone());
        Some(entry)
    }

    /// Whether the disk tier may hold a key (no disk access).
    pub fn may_be_on_disk(&self, url: &str, extra: &str) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.has(&crate::disk::file_id(url, extra)))
    }

    fn insert_in_memory(&self, url: &str, extra: &str, entry: Arc<Entry>) -> bool {
        let weight = entry.weight() + url.len() + extra.len();
        if entry.body.len() > self.max_object || weight > self.shard_budget {
            return false;
        }
        let mut guard = lock(self.shard(url));
        let shard = &mut *guard;
        let (before, entries_before) = match shard.lru.get(url) {
            Some(v) => (v.weight(), v.0.len()),
            None => (0, 0),
        };
        let variants = shard
            .lru
            .get_or_insert_mut(Box::from(url), Variants::default);
        let names: Vec<_> = entry.vary.iter().map(|(n, _)| n.clone()).collect();
        // Same added parts, same selecting fields: this response replaces that one.
        // Variants of the same parts selected by other field names are from an older
        // representation of the resource: they go too.
        variants.0.retain(|v| {
            *v.extra != *extra
                || (v.entry.vary.iter().map(|(n, _)| n).eq(names.iter())
                    && v.entry.vary != entry.vary)
        });
        variants.0.push(Variant {
            extra: Box::from(extra),
            entry,
            weight,
        });
        let mut dropped = 0;
        while variants.0.len() > MAX_VARIANTS {
            variants.0.remove(0);
            dropped += 1;
        }
        let after = variants.weight();
        let entries_after = variants.0.len();
        shard.bytes = shard.bytes - before + after;
        self.counters.bytes.inc_by(after as i64 - before as i64);
        self.counters
            .entries
            .inc_by(entries_after as i64 - entries_before as i64);
        let mut evicted = dropped;
        while shard.bytes > self.shard_budget {
            // The entry just placed is the most recent: it goes last, and it fits.
            let Some((_, old)) = shard.lru.pop_lru() else {
                break;
            };
            let w = old.weight();
            shard.bytes -= w;
            self.counters.bytes.dec_by(w as i64);
            self.counters.entries.dec_by(old.0.len() as i64);
            evicted += old.0.len();
        }
        if evicted > 0 {
            self.counters.evictions.inc_by(evicted as u64);
        }
        true
    }

    /// Drops every stored variant of a URL, on disk too; returns how many.
    pub fn remove_url(&self, url: &str) -> usize {
        let on_disk = self
            .disk
            .as_ref()
            .map_or(0, |d| d.remove_matching(Some(url), None));
        self.remove_url_in_memory(url).max(on_disk)
    }

    fn remove_url_in_memory(&self, url: &str) -> usize {
        let mut shard = lock(self.shard(url));
        let Some(variants) = shard.lru.pop(url) else {
            return 0;
        };
        let w = variants.weight();
        shard.bytes -= w;
        drop(shard);
        self.counters.bytes.dec_by(w as i64);
        self.counters.entries.dec_by(variants.0.len() as i64);
        variants.0.len()
    }

    /// Drops a stored variant that is no longer usable (the origin said so).
    pub fn remove_entry(&self, url: &str, entry: &Arc<Entry>) {
        let mut guard = lock(self.shard(url));
        let shard = &mut *guard;
        let Some(variants) = shard.lru.peek_mut(url) else {
            return;
        };
        let before = variants.0.len();
        let mut freed = 0;
        let mut extras = Vec::new();
        variants.0.retain(|v| {
            let keep = !Arc::ptr_eq(&v.entry, entry);
            if !keep {
                freed += v.weight;
                extras.push(v.extra.clone());
            }
            keep
        });
        if let Some(disk) = &self.disk {
            for extra in &extras {
                disk.remove(&crate::disk::file_id(url, extra));
            }
        }
        let removed = before - variants.0.len();
        let empty = variants.0.is_empty();
        shard.bytes -= freed;
        if empty {
            shard.lru.pop(url);
        }
        self.counters.bytes.dec_by(freed as i64);
        self.counters.entries.dec_by(removed as i64);
    }

    /// Drops every URL starting with `prefix`, on disk too; returns how many entries
    /// went.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let on_disk = self
            .disk
            .as_ref()
            .map_or(0, |d| d.remove_matching(None, Some(prefix)));
        let mut removed = 0;
        for shard in self.shards.iter() {
            let urls: Vec<Box<str>> = lock(shard)
                .lru
                .iter()
                .filter(|(url, _)| url.starts_with(prefix))
                .map(|(url, _)| url.clone())
                .collect();
            for url in urls {
                removed += self.remove_url_in_memory(&url);
            }
        }
        removed.max(on_disk)
    }

    /// Claims the fill of `key` (URL and added parts) for this request, or returns the
    /// running fill to wait for.
    pub fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut fills = lock(&self.fills);
        if let Some(running) = fills.get(key) {
            return Claim::Wait(running.clone());
        }
        let (done, waiting) = watch::channel(());
        fills.insert(Box::from(key), waiting);
        Claim::Fill(FillPermit {
            zone: self.clone(),
            key: Box::from(key),
            _done: done,
        })
    }

    /// Bytes held, as counted against `max_mib`.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

/// Waits until a running fill ends (stored or not), at most `bound`.
pub async fn wait_for_fill(mut running: watch::Receiver<()>, bound: Duration) {
    // The sender never sends: its drop (the fill's end) is what `changed` reports.
    let _ = tokio::time::timeout(bound, running.changed()).await;
}

/// Every zone by name, and their counters; a reload keeps the zones whose settings
/// did not change.
#[derive(Default, Clone)]
pub struct Zones {
    zones: HashMap<String, Arc<Zone>>,
    pub counters: CacheCounters,
}

impl Zones {
    pub fn build(
        configs: &std::collections::BTreeMap<String, CacheZoneConfig>,
        previous: Option<&Zones>,
    ) -> anyhow::Result<Zones> {
        let counters = previous.map(|p| p.counters.clone()).unwrap_or_default();
        let counters = &counters;
        let mut zones = HashMap::new();
        for (name, config) in configs {
            let kept = previous
                .and_then(|p| p.zones.get(name))
                .filter(|z| z.config == *config)
                .cloned();
            let zone = match kept {
                Some(zone) => zone,
                None => {
                    if previous.is_some_and(|p| p.zones.contains_key(name)) {
                        tracing::info!(target: "sluice::cache", zone = %name, "cache zone settings changed: its stored responses are dropped");
                    }
                    Zone::new(name, config, counters).map_err(|e| {
                        anyhow::anyhow!(
                            "cache.zones.{name}.disk_dir: cannot use {}: {e}",
                            config
                                .disk_dir
                                .as_deref()
                                .unwrap_or(std::path::Path::new(""))
                                .display()
                        )
                    })?
                }
            };
            zones.insert(name.clone(), zone);
        }
        if let Some(previous) = previous {
            for (name, old) in &previous.zones {
                if zones.get(name).is_none_or(|z| !Arc::ptr_eq(z, old)) {
                    // Its gauges would otherwise keep what it held.
                    old.counters.bytes.dec_by(old.bytes() as i64);
                    old.counters.entries.set(0);
                }
            }
        }
        Ok(Zones {
            zones,
            counters: counters.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Zone>> {
        self.zones.get(name)
    }

    /// Purges a URL (all variants) or every URL under a prefix, in every zone.
    pub fn purge(&self, url: Option<&str>, prefix: Option<&str>) -> usize {
        let mut removed = 0;
        for zone in self.zones.values() {
            if let Some(url) = url {
                removed += zone.remove_url(url);
            }
            if let Some(prefix) = prefix {
                removed += zone.remove_prefix(prefix);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Freshness;
    use bytes::Bytes;
    use http::header::{self, HeaderValue};
    use http::StatusCode;
    use std::time::SystemTime;

    fn config(max_mib: u64) -> CacheZoneConfig {
        CacheZoneConfig {
            max_mib,
            max_object_mib: Some(1),
            default_ttl_s: 0,
            heuristic: false,
            disk_dir: None,
            disk_max_mib: None,
        }
    }

    fn entry(body: usize, vary: Vec<(header::HeaderName, Option<Vec<u8>>)>) -> Arc<Entry> {
        let now = SystemTime::now();
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body]),
            vary,
            (now, now),
            Freshness::lasting(Duration::from_secs(60)),
        ))
    }

    #[test]
    fn variants_by_extra_and_vary() {
        let counters = CacheCounters::default();
        let zone = Zone::new("z", &config(16), &counters).unwrap();
        let en = vec![(header::ACCEPT_LANGUAGE, Some(b"en".to_vec()))];
        let fr = vec![(header::ACCEPT_LANGUAGE, Some(b"fr".to_vec()))];
        assert!(zone.insert("http://a/x", "", entry(10, en)));
        assert!(zone.insert("http://a/x", "", entry(20, fr)));
        let mut req = HeaderMap::new();
        req.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        let Lookup::Found(found) = zone.lookup("http://a/x", "", &req) else {
            panic!("fr variant missing");
        };
        assert_eq!(found.body.len(), 20);
        assert!(matches!(
            zone.lookup("http://a/x", "c", &req),
            Lookup::VaryMiss
        ));
        req.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert!(matches!(
            zone.lookup("http://a/x", "", &req),
            Lookup::VaryMiss
        ));
        assert_eq!(zone.remove_url("http://a/x"), 2);
        assert_eq!(zone.bytes(), 0);
        assert_eq!(counters.zone("z").entries.get(), 0);
    }

    #[test]
    fn the_budget_evicts_least_recently_used() {
        let counters = CacheCounters::default();
        let zone = Zone::new("z", &config(1), &counters).unwrap();
        // 16 shards of 64 KiB: 200 entries of 8 KiB cannot all stay.
        for i in 0..200 {
            assert!(zone.insert(&format!("http://a/{i}"), "", entry(8192, Vec::new())));
        }
        assert!(zone.bytes() <= 1 << 20);
        assert!(counters.zone("z").evictions.get() > 0);
        assert!(matches!(
            zone.lookup("http://a/199", "", &HeaderMap::new()),
            Lookup::Found(_)
        ));
        // Larger than a shard's share: refused, not stored over the budget.
        assert!(!zone.insert("http://a/big", "", entry(100 * 1024, Vec::new())));
    }

    #[test]
    fn prefix_purge_and_one_fill_per_key() {
        let counters = CacheCounters::default();
        let zone = Zone::new("z", &config(16), &counters).unwrap();
        zone.insert("http://a/p/1", "", entry(1, Vec::new()));
        zone.insert("http://a/p/2", "", entry(1, Vec::new()));
        zone.insert("http://a/q", "", entry(1, Vec::new()));
        assert_eq!(zone.remove_prefix("http://a/p/"), 2);
        assert!(matches!(
            zone.lookup("http://a/q", "", &HeaderMap::new()),
            Lookup::Found(_)
        ));
        let first = zone.claim("k");
        assert!(matches!(first, Claim::Fill(_)));
        let Claim::Wait(waiting) = zone.claim("k") else {
            panic!("second claim should wait");
        };
        drop(first);
        assert!(
            waiting.has_changed().is_err(),
            "the end of the fill is seen"
        );
        assert!(matches!(zone.claim("k"), Claim::Fill(_)));
    }
}
