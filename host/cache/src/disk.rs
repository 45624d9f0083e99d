//! A zone's disk tier: the latest stored response of each key (URL and added key
//! parts) in a file of its own, so that a restart starts warm. Every file ends with
//! the SHA-256 of what precedes it; one that does not check out is deleted, never
//! served. Files are written on blocking threads (a bounded number at once; past it
//! a fill stays in memory only) through a temporary file and a rename.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::entry::Entry;
use crate::policy::Freshness;

const MAGIC: &[u8; 8] = b"SLCACHE1";
/// Writes in flight at most; more fills than this stay in memory only.
const MAX_PENDING_WRITES: usize = 8;
/// Fields and names of a stored head are bounded like a response head.
const MAX_FIELDS: usize = 1000;

type FileId = [u8; 32];

struct Indexed {
    url: Box<str>,
    size: u64,
}

struct Index {
    files: LruCache<FileId, Indexed>,
    bytes: u64,
}

pub struct DiskTier {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    pending: Arc<AtomicUsize>,
    /// Files found corrupt (and deleted), for the log and the tests.
    pub discarded: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file of a key: SHA-256 of the URL and the added key parts.
pub fn file_id(url: &str, extra: &str) -> FileId {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    h.update([0]);
    h.update(extra.as_bytes());
    h.finalize().into()
}

fn hex(id: &FileId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<FileId> {
    if name.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

impl DiskTier {
    /// Opens (creating) `dir` and indexes the files already in it, least recently
    /// modified first out; files over the budget, unreadable or not ours are removed
    /// (only names this tier writes are touched).
    pub fn open(dir: &Path, budget_mib: u64) -> std::io::Result<DiskTier> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for shard in std::fs::read_dir(dir)? {
            let shard = shard?;
            let shard_name = shard.file_name();
            let Some(shard_name) = shard_name.to_str() else {
                continue;
            };
            if shard_name.len() != 2 || !shard.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                let file = file?;
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(file.path());
                    continue;
                }
                let Some(id) = unhex(name) else { continue };
                let meta = file.metadata()?;
                match read_url(&file.path()) {
                    Some(url) => {
                        found.push((meta.modified().unwrap_or(UNIX_EPOCH), id, url, meta.len()))
                    }
                    None => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            budget: budget_mib << 20,
            index: Mutex::new(Index {
                files: LruCache::unbounded(),
                bytes: 0,
            }),
            pending: Arc::new(AtomicUsize::new(0)),
            discarded: AtomicUsize::new(0),
        };
        for (_, id, url, size) in found {
            tier.note(id, url, size);
        }
        Ok(tier)
    }

    fn path(&self, id: &FileId) -> PathBuf {
        let name = hex(id);
        self.dir.join(&name[..2]).join(name)
    }

    /// Records a file in the index, removing the oldest past the budget.
    fn note(&self, id: FileId, url: Box<str>, size: u64) {
        let mut evict = Vec::new();
        {
            let mut index = lock(&self.index);
            if let Some(old) = index.files.put(id, Indexed { url, size }) {
                index.bytes -= old.size;
            }
            index.bytes += size;
            while index.bytes > self.budget {
                let Some((old_id, old)) = index.files.pop_lru() else {
                    break;
                };
                index.bytes -= old.size;
                evict.push(old_id);
            }
        }
        for id in evict {
            let _ = std::fs::remove_file(self.path(&id));
        }
    }

    /// Whether a file may hold the key (no disk read for keys never written).
    pub fn has(&self, id: &FileId) -> bool {
        lock(&self.index).files.contains(id)
    }

    /// Reads a key's file (blocking): its entry when whole and for this key; a file
    /// that does not check out is deleted.
    pub fn read(&self, id: &FileId, url: &str, extra: &str) -> Option<Entry> {
        let path = self.path(id);
        let data = std::fs::read(&path).ok()?;
        match decode(&data) {
            Some((file_url, file_extra, entry)) if file_url == url && file_extra == extra => {
                lock(&self.index).files.get(id);
                Some(entry)
            }
            Some(_) => None,
            None => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "sluice::cache", file = %path.display(), "corrupt cache file discarded");
                self.remove(id);
                None
            }
        }
    }

    /// Writes an entry in the background, unless too many writes are in flight.
    pub fn write(self: &Arc<Self>, url: &str, extra: &str, entry: Arc<Entry>) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_WRITES {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let tier = self.clone();
        let (url, extra) = (Box::<str>::from(url), Box::<str>::from(extra));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        runtime.spawn_blocking(move || {
            let id = file_id(&url, &extra);
            let data = encode(&url, &extra, &entry);
            match tier.write_file(&id, &data) {
                Ok(()) => tier.note(id, url, data.len() as u64),
                Err(e) => {
                    tracing::warn!(target: "sluice::cache", dir = %tier.dir.display(), "cannot write a cache file: {e}")
                }
            }
            tier.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn write_file(&self, id: &FileId, data: &[u8]) -> std::io::Result<()> {
        let path = self.path(id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        drop(file);
        std::fs::rename(&tmp, &path)
    }

    /// Removes a key's file.
    pub fn remove(&self, id: &FileId) {
        let removed = {
            let mut index = lock(&self.index);
            let old = index.files.pop(id);
            if let Some(old) = &old {
                index.bytes -= old.size;
            }
            old.is_some()
        };
        if removed {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// Removes the files of every key whose URL is `url` (all added key parts), or
    /// starts with `prefix`; returns how many.
    pub fn remove_matching(&self, url: Option<&str>, prefix: Option<&str>) -> usize {
        let ids: Vec<FileId> = lock(&self.index)
            .files
            .iter()
            .filter(|(_, f)| {
                url.is_some_and(|u| &*f.url == u) || prefix.is_some_and(|p| f.url.starts_with(p))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    /// Bytes of the files indexed.
    pub fn bytes(&self) -> u64 {
        lock(&self.index).bytes
    }

    /// Waits (bounded) until no write is in flight: for tests and shutdown.
    pub fn settle(&self, bound: Duration) {
        let deadline = std::time::Instant::now() + bound;
        while self.pending.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_time(out: &mut Vec<u8>, d: Duration) {
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn encode(url: &str, extra: &str, entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.body.len() + 1024);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, url.as_bytes());
    put_bytes(&mut out, extra.as_bytes());
    out.extend_from_slice(&entry.status.as_u16().to_le_bytes());
    put_time(
        &mut out,
        entry
            .response_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    put_time(&mut out, entry.initial_age);
    let f = &entry.freshness;
    put_time(&mut out, f.lifetime);
    put_time(&mut out, f.stale_while_revalidate);
    put_time(&mut out, f.stale_if_error);
    out.push(u8::from(f.must_revalidate) | (u8::from(f.no_cache) << 1));
    out.extend_from_slice(&(entry.vary.len() as u32).to_le_bytes());
    for (name, value) in &entry.vary {
        put_bytes(&mut out, name.as_str().as_bytes());
        match value {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&(entry.headers.len() as u32).to_le_bytes());
    for (name, value) in &entry.headers {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    put_bytes(&mut out, &entry.body);
    let digest: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&digest);
    out
}

/// Reads what a file holds, checking every length against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn time(&mut self) -> Option<Duration> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
    }
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// The URL a file is for, from its first bytes (to index it at start).
fn read_url(path: &Path) -> Option<Box<str>> {
    use std::io::Read as _;
    let mut head = vec![0u8; 8 + 4 + 8192];
    let mut file = std::fs::File::open(path).ok()?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
    let mut r = Reader(&head[..filled]);
    (r.take(8)? == MAGIC).then_some(())?;
    Some(r.text()?.into())
}

fn decode(data: &[u8]) -> Option<(String, String, Entry)> {
    let split = data.len().checked_sub(32)?;
    let (content, digest) = data.split_at(split);
    let expected: [u8; 32] = Sha256::digest(content).into();
    if expected != digest {
        return None;
    }
    let mut r = Reader(content);
    (r.take(8)? == MAGIC).then_some(())?;
    let url = r.text()?.to_string();
    let extra = r.text()?.to_string();
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let response_time = UNIX_EPOCH.checked_add(r.time()?)?;
    let initial_age = r.time()?;
    let lifetime = r.time()?;
    let stale_while_revalidate = r.time()?;
    let stale_if_error = r.time()?;
    let flags = r.u8()?;
    let vary_count = r.u32()? as usize;
    if vary_count > MAX_FIELDS {
        return None;
    }
    let mut vary = Vec::with_capacity(vary_count);
    for _ in 0..vary_count {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = match r.u8()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            _ => return None,
        };
        vary.push((name, value));
    }
    let field_count = r.u32()? as usize;
    if field_count > MAX_FIELDS {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(field_count);
    for _ in 0..field_count {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.0.is_empty() {
        return None;
    }
    let entry = Entry {
        status,
        headers,
        body,
        vary,
        response_time,
        initial_age,
        freshness: Freshness {
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            must_revalidate: flags & 1 != 0,
            no_cache: flags & 2 != 0,
        },
    };
    Some((url, extra, entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn entry() -> Entry {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            vec![
                (http::header::ACCEPT, Some(b"text/html".to_vec())),
                (http::header::COOKIE, None),
            ],
            (now, now),
            Freshness {
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::ZERO,
                must_revalidate: true,
                no_cache: false,
            },
        )
    }

    #[test]
    fn an_entry_survives_encoding_and_a_flipped_byte_does_not() {
        let e = entry();
        let data = encode("http://a/x", "h:fr", &e);
        let (url, extra, back) = decode(&data).unwrap();
        assert_eq!((url.as_str(), extra.as_str()), ("http://a/x", "h:fr"));
        assert_eq!(back.body, e.body);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.vary, e.vary);
        assert_eq!(back.freshness, e.freshness);
        assert_eq!(back.response_time, e.response_time);
        for i in [0, 9, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_none(), "byte {i}");
        }
        assert!(decode(&data[..data.len() - 1]).is_none());
        assert!(decode(&[]).is_none());
    }

    #[test]
    fn files_are_indexed_at_open_and_kept_within_the_budget() {
        let dir = std::env::temp_dir().join(format!("sluice-disk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tier = DiskTier::open(&dir, 1).unwrap();
        let e = entry();
        let id = file_id("http://a/x", "");
        let data = encode("http://a/x", "", &e);
        tier.write_file(&id, &data).unwrap();
        tier.note(id, "http://a/x".into(), data.len() as u64);
        drop(tier);
        let tier = DiskTier::open(&dir, 1).unwrap();
        assert!(tier.has(&id));
        assert_eq!(tier.read(&id, "http://a/x", "").unwrap().body, e.body);
        assert!(tier.read(&id, "http://a/y", "").is_none());
        // A corrupt file is deleted, not served.
        let path = tier.path(&id);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(tier.read(&id, "http://a/x", "").is_none());
        assert!(!path.exists());
        assert!(!tier.has(&id));
        assert_eq!(tier.remove_matching(Some("http://a/x"), None), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
