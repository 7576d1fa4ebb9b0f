//! Inference sessions: one KV cache per session id, with a time-to-live and a cap on the
//! bytes all caches hold together (least recently used evicted first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use neuroshard_model::kv_cache::KvCache;

#[derive(Debug)]
struct Session {
    cache: KvCache,
    last_used: Instant,
}

/// The sessions of one loaded shard.
#[derive(Debug)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    ttl: Duration,
    max_bytes: u64,
}

impl Sessions {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        Self {
            sessions: HashMap::new(),
            ttl,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The cache of `id`, created empty by `new_cache` when absent or expired.
    pub fn get_or_create(
        &mut self,
        id: &str,
        now: Instant,
        new_cache: impl FnOnce() -> KvCache,
    ) -> &mut KvCache {
        self.expire(now);
        let session = self
            .sessions
            .entry(id.to_string())
            .or_insert_with(|| Session {
                cache: new_cache(),
                last_used: now,
            });
        session.last_used = now;
        &mut session.cache
    }

    /// Replaces the cache of `id` (after a replay).
    pub fn insert(&mut self, id: &str, cache: KvCache, now: Instant) {
        self.sessions.insert(
            id.to_string(),
            Session {
                cache,
                last_used: now,
            },
        );
        self.enforce_cap();
    }

    pub fn remove(&mut self, id: &str) -> bool {
        self.sessions.remove(id).is_some()
    }

    /// Drops expired sessions, then the least recently used until under the byte cap.
    pub fn enforce_cap(&mut self) {
        loop {
            let total: u64 = self
                .sessions
                .values()
                .map(|s| s.cache.size_bytes() as u64)
                .sum();
            if total <= self.max_bytes {
                return;
            }
            let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.sessions.remove(&oldest);
        }
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.sessions
            .retain(|_, s| now.duration_since(s.last_used) <= ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_recreated() {
        let mut sessions = Sessions::new(Duration::from_millis(100), u64::MAX);
        let t0 = Instant::now();
        sessions.get_or_create("a", t0, || KvCache::new(2));
        sessions.get_or_create("b", t0, || KvCache::new(2));
        assert_eq!(sessions.len(), 2);
        sessions.get_or_create("b", t0 + Duration::from_millis(150), || KvCache::new(2));
        assert_eq!(sessions.len(), 1, "a expired");
        assert!(sessions.remove("b"));
        assert!(!sessions.remove("b"));
    }
}
