//! What the service and the node's lifecycle share: the span loaded now, swapped whole when
//! the assignment changes. Requests take an `Arc` of the current span and keep it to the end,
//! so a reload never pulls weights or sessions from under a pass in flight; the old span (and
//! its compute thread) goes once its last request is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::tensor::Limits;
use neuroshard_common::{ModelConfig, Result};
use neuroshard_model::tch::Kind;
use neuroshard_model::{Shard, ShardSpec};

use crate::compute::{ComputeOptions, ComputeQueue};
use crate::sessions::Sessions;

/// A span of layers loaded on this node, with its sessions (which die with it) and the
/// compute thread that owns its weights.
#[derive(Debug)]
pub struct Loaded {
    pub spec: ShardSpec,
    pub config: ModelConfig,
    /// Parameter dtype: hidden states sent to the span must come in it.
    pub kind: Kind,
    pub sessions: Sessions,
    pub assignment_version: AtomicU64,
    /// The architecture the span was loaded from (its version says which layers a span
    /// index means; training loads θ_start from it again).
    pub architecture: Arc<ArchitectureState>,
    /// The aggregator round whose global weights these are (0: the checkpoint or seed).
    pub weights_round: u64,
    pub compute: ComputeQueue,
}

impl Loaded {
    /// Takes `shard` into a compute thread of its own.
    pub fn start(
        shard: Shard,
        sessions: Sessions,
        assignment_version: u64,
        architecture: Arc<ArchitectureState>,
        weights_round: u64,
        options: ComputeOptions,
    ) -> Result<Self> {
        let (spec, config, kind) = (shard.spec(), shard.config().clone(), shard.kind());
        Ok(Self {
            spec,
            config,
            kind,
            sessions,
            assignment_version: AtomicU64::new(assignment_version),
            architecture,
            weights_round,
            compute: ComputeQueue::start(shard, options)?,
        })
    }

    /// Layers a session's cache holds.
    pub fn layers(&self) -> usize {
        self.spec.len() as usize
    }

    pub fn assignment_version(&self) -> u64 {
        self.assignment_version.load(Ordering::Relaxed)
    }

    pub fn set_assignment_version(&self, version: u64) {
        self.assignment_version.store(version, Ordering::Relaxed);
    }
}

/// State shared by the service and the node lifecycle.
#[derive(Debug)]
pub struct WorkerState {
    pub node_id: String,
    /// Held only to clone or replace the `Arc`, never across compute.
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Whether a span is loaded, for the readiness health name.
    loaded_flag: tokio::sync::watch::Sender<bool>,
    pub session_ttl: Duration,
    pub max_session_bytes: u64,
    pub limits: Limits,
    /// Most chunks one streamed tensor may come in.
    pub max_stream_chunks: usize,
    /// Size of the chunks streamed responses are cut into.
    pub stream_chunk_bytes: usize,
    pub compute: ComputeOptions,
}

impl WorkerState {
    /// A node with nothing loaded yet.
    pub fn new(
        node_id: String,
        session_ttl: Duration,
        max_session_bytes: u64,
        limits: Limits,
        max_stream_chunks: usize,
        stream_chunk_bytes: usize,
        compute: ComputeOptions,
    ) -> Self {
        Self {
            node_id,
            loaded: RwLock::new(None),
            loaded_flag: tokio::sync::watch::channel(false).0,
            session_ttl,
            max_session_bytes,
            limits,
            max_stream_chunks,
            stream_chunk_bytes,
            compute,
        }
    }

    /// The span loaded now. (The lock guards one `Option<Arc>` that is only ever replaced
    /// whole, so a poisoned lock still holds a consistent value.)
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the loaded span; requests holding the old one finish on it.
    pub fn set_loaded(&self, loaded: Option<Loaded>) {
        self.loaded_flag.send_replace(loaded.is_some());
        let old = std::mem::replace(
            &mut *self.loaded.write().unwrap_or_else(PoisonError::into_inner),
            loaded.map(Arc::new),
        );
        drop(old);
    }

    /// True while a span is loaded (what readiness reports).
    pub fn loaded_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.loaded_flag.subscribe()
    }

    /// Sessions open on the loaded span (the queue depth heartbeats report).
    pub fn session_count(&self) -> usize {
        self.loaded().map_or(0, |l| l.sessions.len())
    }

    /// Sessions for a span loaded now, with this node's TTL and byte cap.
    pub fn new_sessions(&self) -> Sessions {
        Sessions::new(self.session_ttl, self.max_session_bytes)
    }
}
