//! Inference sessions: one KV cache per session id, owned by the caller that opened it, with a
//! time-to-live and a cap on the bytes all caches hold together (least recently used evicted
//! first).
//!
//! The map is locked only to look a session up, add or remove one: never across compute.
//! Each session's cache has its own lock, taken by the compute thread while it runs that
//! session, so ending, counting or evicting sessions never waits for a forward.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use neuroshard_common::{Error, Result};
use neuroshard_model::kv_cache::KvCache;

use crate::caller::{Caller, not_yours};

/// One session: its owner and its cache.
#[derive(Debug)]
pub struct Session {
    owner: Caller,
    cache: Mutex<KvCache>,
    /// Bytes the cache held after its last pass, readable without the cache's lock.
    bytes: AtomicU64,
    /// Milliseconds after the map's epoch of the last request on it.
    last_used_ms: AtomicU64,
}

impl Session {
    /// A session of `owner` with an empty `cache`, not yet in any map (a replay builds one and
    /// installs it once its cache is full).
    pub fn new(owner: Caller, cache: KvCache) -> Arc<Self> {
        Arc::new(Self {
            owner,
            cache: Mutex::new(cache),
            bytes: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
        })
    }

    /// The cache, for the compute thread.
    pub fn cache(&self) -> Result<MutexGuard<'_, KvCache>> {
        self.cache
            .lock()
            .map_err(|_| Error::internal("session cache poisoned by a failed pass"))
    }

    /// Records what the cache holds after a pass.
    pub fn record_size(&self, cache: &KvCache) {
        self.bytes
            .store(cache.size_bytes() as u64, Ordering::Relaxed);
    }

    fn touch(&self, ms: u64) {
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }
}

/// The sessions of one loaded span.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    ttl: Duration,
    max_bytes: u64,
    epoch: Instant,
}

impl Sessions {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            max_bytes,
            epoch: Instant::now(),
        }
    }

    /// The map; a panic while it was held cannot leave it half-changed (every change is one
    /// insert or remove), so a poisoned lock is taken as it is.
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// The session `id` of `caller`, created with an empty cache of `layers` layers when
    /// absent or expired. Another caller's session is refused.
    pub fn open(
        &self,
        id: &str,
        caller: Caller,
        layers: usize,
        now: Instant,
    ) -> Result<Arc<Session>> {
        let ms = self.ms(now);
        let mut map = self.map();
        self.expire(&mut map, ms);
        let session = map
            .entry(id.to_string())
            .or_insert_with(|| Session::new(caller, KvCache::new(layers)));
        if session.owner != caller {
            return Err(not_yours());
        }
        session.touch(ms);
        Ok(session.clone())
    }

    /// Refuses `caller` if `id` is another caller's live session.
    pub fn check_owner(&self, id: &str, caller: Caller) -> Result<()> {
        match self.map().get(id) {
            Some(s) if s.owner != caller => Err(not_yours()),
            _ => Ok(()),
        }
    }

    /// Makes `session` (built by a replay) the session `id`, unless another caller holds it.
    pub fn install(&self, id: &str, session: Arc<Session>, now: Instant) -> Result<()> {
        session.touch(self.ms(now));
        let mut map = self.map();
        if map.get(id).is_some_and(|s| s.owner != session.owner) {
            return Err(not_yours());
        }
        map.insert(id.to_string(), session);
        drop(map);
        self.enforce_cap();
        Ok(())
    }

    /// Ends `caller`'s session `id`; whether there was one. Another caller's is refused.
    pub fn end(&self, id: &str, caller: Caller) -> Result<bool> {
        let mut map = self.map();
        match map.get(id) {
            Some(s) if s.owner != caller => Err(not_yours()),
            Some(_) => Ok(map.remove(id).is_some()),
            None => Ok(false),
        }
    }

    /// Drops the least recently used sessions until all caches together fit the byte cap.
    /// A session being computed on is dropped from the map like any other; its pass finishes
    /// and the next request on it finds no session (and replays).
    pub fn enforce_cap(&self) {
        let mut map = self.map();
        let mut total: u64 = map.values().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
        while total > self.max_bytes {
            let Some((oldest, bytes)) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, s)| (k.clone(), s.bytes.load(Ordering::Relaxed)))
            else {
                return;
            };
            map.remove(&oldest);
            total -= bytes;
        }
    }

    fn expire(&self, map: &mut HashMap<String, Arc<Session>>, now_ms: u64) {
        let ttl = self.ttl.as_millis() as u64;
        map.retain(|_, s| now_ms.saturating_sub(s.last_used_ms.load(Ordering::Relaxed)) <= ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller::from_leaf(Some(name.as_bytes()))
    }

    #[test]
    fn sessions_expire_and_are_recreated() {
        let sessions = Sessions::new(Duration::from_millis(100), u64::MAX);
        let t0 = Instant::now();
        let a = caller("a");
        sessions.open("a", a, 2, t0).unwrap();
        sessions.open("b", a, 2, t0).unwrap();
        assert_eq!(sessions.len(), 2);
        sessions
            .open("b", a, 2, t0 + Duration::from_millis(150))
            .unwrap();
        assert_eq!(sessions.len(), 1, "a expired");
        assert!(sessions.end("b", a).unwrap());
        assert!(!sessions.end("b", a).unwrap());
    }

    #[test]
    fn a_session_belongs_to_its_opener() {
        let sessions = Sessions::new(Duration::from_secs(60), u64::MAX);
        let now = Instant::now();
        let (owner, other) = (caller("owner"), caller("other"));
        let session = sessions.open("s", owner, 2, now).unwrap();
        let refused = |r: Result<()>| {
            assert_eq!(
                r.unwrap_err().kind,
                neuroshard_common::ErrorKind::PermissionDenied
            )
        };
        refused(sessions.open("s", other, 2, now).map(|_| ()));
        refused(sessions.check_owner("s", other));
        refused(sessions.end("s", other).map(|_| ()));
        refused(sessions.install("s", Session::new(other, KvCache::new(2)), now));
        let opened_again = sessions.open("s", owner, 2, now).unwrap();
        assert!(Arc::ptr_eq(&session, &opened_again), "still the owner's");
        sessions.check_owner("s", owner).unwrap();
        sessions.check_owner("unknown", other).unwrap();
        assert!(sessions.end("s", owner).unwrap());
    }

    #[test]
    fn the_least_recently_used_go_first_beyond_the_cap() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let a = caller("a");
        for (i, id) in ["old", "mid", "new"].into_iter().enumerate() {
            let s = sessions
                .open(id, a, 1, t0 + Duration::from_millis(10 * i as u64))
                .unwrap();
            s.bytes.store(40, Ordering::Relaxed);
        }
        sessions.enforce_cap();
        assert_eq!(sessions.len(), 2);
        sessions.check_owner("old", caller("b")).unwrap();
        assert!(sessions.check_owner("mid", caller("b")).is_err(), "kept");
    }
}
