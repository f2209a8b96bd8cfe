//! The response cache's memory on this instance: complete 2xx answers by key
//! ([`crate::engine::cache::key`]), within a byte budget (`[cache] max_bytes`), least recently
//! used evicted first, each until its project's `ttl_s` runs out.
//!
//! Sixteen shards, each an LRU map behind its own mutex held for a lookup or an insert (never
//! across an await), so there is no global lock on the request path; each shard gets a
//! sixteenth of the budget. The cache lives outside the configuration: a reload keeps it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use lru::LruCache;

use crate::engine::cache::Key;
use crate::engine::pricing::Nanos;

const SHARDS: usize = 16;

/// One stored answer.
#[derive(Debug)]
pub struct Entry {
    pub status: u16,
    pub content_type: Option<String>,
    /// The body as the provider sent it (a stream's events as received, its usage chunk in).
    pub body: Bytes,
    pub sse: bool,
    /// What the original call was charged: a hit saves this.
    pub cost: Nanos,
    pub expires: Instant,
}

impl Entry {
    /// What an entry holds in the budget: its bytes and a little for the rest.
    fn weight(&self) -> u64 {
        (self.body.len() + self.content_type.as_ref().map_or(0, String::len) + 128) as u64
    }
}

struct Shard {
    map: LruCache<Key, Arc<Entry>>,
    bytes: u64,
}

pub struct ResponseCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: u64,
    bytes: AtomicU64,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ResponseCache {
    pub fn new(max_bytes: u64) -> ResponseCache {
        ResponseCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            shard_budget: (max_bytes / SHARDS as u64).max(1),
            bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The entry, if it is there and not expired at `now` (an expired one is dropped).
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let mut s = lock(self.shard(key));
        let e = s.map.get(key)?.clone();
        if now >= e.expires {
            if let Some(old) = s.map.pop(key) {
                s.bytes = s.bytes.saturating_sub(old.weight());
                self.bytes.fetch_sub(old.weight(), Ordering::Relaxed);
            }
            return None;
        }
        Some(e)
    }

    /// Store `entry` (replacing an older one), evicting the least recently used until the
    /// shard is within its budget. An entry larger than a shard's budget is not stored.
    pub fn put(&self, key: Key, entry: Arc<Entry>) {
        let w = entry.weight();
        if w > self.shard_budget {
            return;
        }
        let mut s = lock(self.shard(&key));
        if let Some(old) = s.map.put(key, entry) {
            s.bytes = s.bytes.saturating_sub(old.weight());
            self.bytes.fetch_sub(old.weight(), Ordering::Relaxed);
        }
        s.bytes += w;
        self.bytes.fetch_add(w, Ordering::Relaxed);
        while s.bytes > self.shard_budget {
            match s.map.pop_lru() {
                Some((_, old)) => {
                    s.bytes = s.bytes.saturating_sub(old.weight());
                    self.bytes.fetch_sub(old.weight(), Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    /// Bytes held now (the `tollgate_cache_bytes` gauge).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// An entry as the fleet keeps it in Redis: one JSON line (status, content type, stream or
/// not, cost in nanos, expiry in Unix ms), then the body bytes.
pub fn encode(e: &Entry, expires_unix_ms: i64) -> Vec<u8> {
    let head = serde_json::json!({
        "s": e.status,
        "ct": e.content_type,
        "sse": e.sse,
        "c": e.cost.0,
        "x": expires_unix_ms,
    })
    .to_string();
    let mut out = Vec::with_capacity(head.len() + 1 + e.body.len());
    out.extend_from_slice(head.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&e.body);
    out
}

/// [`encode`]'s inverse; `None` for anything else (a foreign value is never served).
pub fn decode(blob: &[u8], now: Instant, now_unix_ms: i64) -> Option<Entry> {
    let nl = memchr::memchr(b'\n', blob)?;
    let head: serde_json::Value = serde_json::from_slice(&blob[..nl]).ok()?;
    let left = head["x"].as_i64()?.checked_sub(now_unix_ms)?;
    if left <= 0 {
        return None;
    }
    Some(Entry {
        status: u16::try_from(head["s"].as_u64()?).ok()?,
        content_type: head["ct"].as_str().map(str::to_string),
        body: Bytes::copy_from_slice(&blob[nl + 1..]),
        sse: head["sse"].as_bool()?,
        cost: Nanos(head["c"].as_u64()?),
        expires: now + std::time::Duration::from_millis(left as u64),
    })
}

/// A key in hex (the fleet's Redis key of an entry).
pub fn hex(key: &Key) -> String {
    crate::engine::auth::hex(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(n: usize, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from(vec![b'x'; n]),
            sse: false,
            cost: Nanos(7),
            expires: Instant::now() + ttl,
        })
    }

    /// Keys that land in one shard (the first byte picks it).
    fn key(i: u8) -> Key {
        let mut k = [0u8; 32];
        k[1] = i;
        k
    }

    #[test]
    fn the_least_recently_used_goes_first_when_the_budget_is_full() {
        let c = ResponseCache::new(16 * 1000);
        let hour = Duration::from_secs(3600);
        c.put(key(1), entry(300, hour));
        c.put(key(2), entry(300, hour));
        assert!(
            c.get(&key(1), Instant::now()).is_some(),
            "1 is now the most recent"
        );
        c.put(key(3), entry(300, hour));
        let now = Instant::now();
        assert!(
            c.get(&key(2), now).is_none(),
            "2 was the least recently used"
        );
        assert!(c.get(&key(1), now).is_some());
        assert!(c.get(&key(3), now).is_some());
        assert_eq!(c.bytes(), 2 * (300 + 16 + 128));
        c.put(key(4), entry(2000, hour));
        assert!(
            c.get(&key(4), now).is_none(),
            "larger than a shard's budget: not stored"
        );
    }

    #[test]
    fn an_entry_round_trips_through_its_fleet_form_and_a_foreign_value_is_refused() {
        let now = Instant::now();
        let e = entry(5, Duration::from_secs(60));
        let blob = encode(&e, 2_000);
        let back = decode(&blob, now, 1_000).expect("decodes");
        assert_eq!(
            (
                back.status,
                &back.content_type,
                &back.body,
                back.sse,
                back.cost
            ),
            (200, &e.content_type, &e.body, false, Nanos(7))
        );
        assert!(back.expires > now + Duration::from_millis(900));
        assert!(decode(&blob, now, 2_000).is_none(), "expired");
        assert!(decode(b"hello", now, 0).is_none());
        assert!(decode(b"{}\nbody", now, 0).is_none());
    }

    #[test]
    fn an_expired_entry_is_gone() {
        let c = ResponseCache::new(1 << 20);
        c.put(key(1), entry(10, Duration::from_millis(50)));
        assert!(c.get(&key(1), Instant::now()).is_some());
        assert!(c
            .get(&key(1), Instant::now() + Duration::from_millis(60))
            .is_none());
        assert_eq!(c.bytes(), 0);
    }
}
