//! The engine's shared state: what the registry watch task writes (the assignment view) and
//! every generation reads and records into (node statistics, request tracking, worker
//! connections). Its own module so that the engine's parts depend on it, not on each other.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::EngineConfig;
use super::hops::HopClient;
use super::replay::ReplayMemory;
use super::stats::StatsBook;
use super::tracker::Tracker;
use super::view::SwarmView;
use crate::status::TrainingStatus;

/// The engine's state, shared by the watch task and every generation.
#[derive(Debug)]
pub(crate) struct EngineState {
    pub(super) config: EngineConfig,
    pub(super) view: RwLock<Arc<SwarmView>>,
    pub(super) stats: Mutex<StatsBook>,
    pub(super) tracker: Mutex<Tracker>,
    pub(super) hops: HopClient,
    /// Hidden states all generations keep for replay, against the gateway's budget.
    pub(super) replay_memory: Arc<ReplayMemory>,
    pub(super) training: Mutex<Option<TrainingStatus>>,
    /// What the swarm's Drivers reported last (see [`super::training`]).
    pub(super) progress: Mutex<super::training::TrainingProgress>,
    /// Woken on every new assignment, for requests waiting for a route.
    pub(super) view_changed: tokio::sync::Notify,
    /// Unix seconds when the engine started, the model card's `created`.
    pub(super) created: u64,
}

impl EngineState {
    pub(super) fn view(&self) -> Arc<SwarmView> {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn stats(&self) -> MutexGuard<'_, StatsBook> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_view(&self, view: SwarmView) {
        self.stats()
            .retain(|id| view.nodes.iter().any(|n| n.id == id));
        let mut slot = self.view.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(view);
        drop(slot);
        self.view_changed.notify_waiters();
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
