//! The node's life with the registry: measure, register (signed), heartbeat, and load the span
//! the registry assigns, reloading when the assignment changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::{Error, ModelConfig, Result};
use neuroshard_model::growth::{Origin, build_grown_span};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{Shard, ShardInput, ShardSpec, checkpoint, init};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, GetAssignmentRequest, HeartbeatRequest, RegisterRequest,
};
use prost::Message;
use tonic::transport::Channel;

use crate::service::{Loaded, WorkerState};
use crate::sessions::Sessions;

/// How this node loads weights.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub checkpoint: Option<std::path::PathBuf>,
    pub init_seed: u64,
    pub device: Device,
    pub kind: Kind,
}

/// Loads layers [start, end) of the published architecture `arch` as `plan` says. Growth
/// appends layers (see `neuroshard_common::growth`), so the layers the registry added since the
/// weights were made are identity blocks drawn from the seed, and the function is the one the
/// weights had. The others come from the checkpoint, which must hold the model at one of the
/// depths the architecture has had, or from the seed at the genesis depth.
pub fn load_span(arch: &ArchitectureState, start: u32, end: u32, plan: &LoadPlan) -> Result<Shard> {
    let config = &arch.config;
    let spec = ShardSpec::span(i64::from(start), i64::from(end), config.num_layers)
        .map_err(Error::from)?;
    let (base, origin) = match &plan.checkpoint {
        Some(dir) => {
            let stored = checkpoint::read_config(dir).map_err(Error::from)?;
            let same_shape = stored
                == ModelConfig {
                    num_layers: stored.num_layers,
                    ..config.clone()
                };
            if !same_shape || !arch.depths().contains(&stored.num_layers) {
                return Err(Error::failed_precondition(format!(
                    "checkpoint {} holds a different architecture than the registry assigns \
                     ({} layers of width {}; the registry's model has had depths {:?} at width {})",
                    dir.display(),
                    stored.num_layers,
                    stored.hidden_size,
                    arch.depths(),
                    config.hidden_size
                )));
            }
            (stored.num_layers, Origin::Checkpoint(dir))
        }
        None => (arch.genesis_layers(), Origin::Seed),
    };
    build_grown_span(
        config,
        spec,
        base,
        origin,
        plan.init_seed,
        plan.device,
        plan.kind,
    )
    .map_err(Error::from)
}

/// Tokens per second through one decoder layer of `config` on this device (64-token chunks):
/// the honest throughput this node reports.
pub fn measure_throughput(config: &ModelConfig, device: Device, kind: Kind) -> Result<f64> {
    let spec = ShardSpec {
        start: 0,
        end: 1,
        embed: false,
        head: false,
    };
    let mut shard = Shard::new(config, spec, device, kind).map_err(Error::from)?;
    init::initialize(&mut shard, 0).map_err(Error::from)?;
    let _guard = neuroshard_model::tch::no_grad_guard();
    let seq = 64.min(config.max_seq_len);
    let x = Tensor::randn([1, seq, config.hidden_size], (kind, device));
    let _ = shard
        .forward(ShardInput::Hidden(&x), None)
        .map_err(Error::from)?;
    let started = Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        let _ = shard
            .forward(ShardInput::Hidden(&x), None)
            .map_err(Error::from)?;
    }
    Ok((rounds * seq) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Half the memory the machine has available (from /proc/meminfo), or 1 GiB if unknown.
pub fn default_usable_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024 / 2)
}

/// Signs messages for the registry with this node's key.
#[derive(Debug)]
pub struct RegistryLink {
    pub client: LayerRegistryClient<Channel>,
    pub key: NodeKey,
    pub network_id: String,
    nonces: NonceSource,
}

impl RegistryLink {
    pub fn new(client: LayerRegistryClient<Channel>, key: NodeKey, network_id: String) -> Self {
        Self {
            client,
            key,
            network_id,
            nonces: NonceSource::new(),
        }
    }

    fn envelope(
        &self,
        name: &str,
        message: &impl Message,
    ) -> Result<neuroshard_proto::common::v1::SignedEnvelope> {
        sign(
            &self.key,
            &self.network_id,
            name,
            self.nonces.next(),
            now_ms(),
            message.encode_to_vec(),
        )
    }

    pub async fn register(
        &mut self,
        endpoint: &str,
        capacity: Capacity,
    ) -> Result<AssignmentSnapshot, tonic::Status> {
        let request = RegisterRequest {
            endpoint: endpoint.to_string(),
            capacity: Some(capacity),
            payout_address: String::new(),
        };
        let envelope = self.envelope("RegisterRequest", &request)?;
        let response = self.client.register(envelope).await?.into_inner();
        response
            .assignment
            .ok_or_else(|| tonic::Status::internal("registry sent no assignment"))
    }

    pub async fn heartbeat(&mut self, queue_depth: u32) -> Result<u64, tonic::Status> {
        let envelope = self.envelope("HeartbeatRequest", &HeartbeatRequest { queue_depth })?;
        Ok(self
            .client
            .heartbeat(envelope)
            .await?
            .into_inner()
            .assignment_version)
    }

    pub async fn assignment(&mut self) -> Result<AssignmentSnapshot, tonic::Status> {
        Ok(self
            .client
            .get_assignment(GetAssignmentRequest {})
            .await?
            .into_inner())
    }
}

/// Applies `snapshot` to this node: loads its span if it or the architecture changed, drops
/// it if unassigned (or if the registry has not chosen an architecture yet).
pub async fn apply(
    state: &Arc<WorkerState>,
    snapshot: &AssignmentSnapshot,
    plan: &LoadPlan,
) -> Result<()> {
    let arch = snapshot
        .architecture
        .as_ref()
        .map(ArchitectureState::from_proto)
        .transpose()?;
    let mine = snapshot.nodes.iter().find(|n| n.node_id == state.node_id);
    let span = mine.and_then(|n| n.span).filter(|_| arch.is_some());
    let arch_version = arch.as_ref().map(|a| a.version);
    let current = {
        let guard = state
            .loaded
            .lock()
            .map_err(|_| Error::internal("worker state poisoned"))?;
        guard
            .as_ref()
            .map(|l| (l.shard.spec(), l.architecture_version))
    };
    let wanted = span.map(|s| (i64::from(s.start), i64::from(s.end)));
    let unchanged = match (&current, wanted) {
        (Some((spec, version)), Some((start, end))) => {
            spec.start == start && spec.end == end && Some(*version) == arch_version
        }
        (None, None) => true,
        _ => false,
    };
    if unchanged {
        if let Ok(mut guard) = state.loaded.lock()
            && let Some(l) = guard.as_mut()
        {
            l.assignment_version = snapshot.version;
        }
        return Ok(());
    }
    let loaded = match (span, arch) {
        (Some(s), Some(arch)) => {
            let plan = plan.clone();
            let layers = arch.config.num_layers;
            let arch_version = arch.version;
            let shard =
                tokio::task::spawn_blocking(move || load_span(&arch, s.start, s.end, &plan))
                    .await
                    .map_err(|e| Error::internal(format!("loading task failed: {e}")))??;
            tracing::info!(node_id = %state.node_id, start = s.start, end = s.end, layers, arch_version, version = snapshot.version, "span loaded");
            Some(Loaded {
                shard,
                sessions: Sessions::new(state.session_ttl, state.max_session_bytes),
                assignment_version: snapshot.version,
                architecture_version: arch_version,
            })
        }
        _ => {
            tracing::info!(node_id = %state.node_id, version = snapshot.version, "no span assigned");
            None
        }
    };
    *state
        .loaded
        .lock()
        .map_err(|_| Error::internal("worker state poisoned"))? = loaded;
    Ok(())
}

/// Heartbeats every `interval` and follows assignment changes until the task is dropped.
pub async fn follow(
    state: Arc<WorkerState>,
    mut link: RegistryLink,
    plan: LoadPlan,
    interval: Duration,
) {
    let mut known_version = None;
    loop {
        let queue_depth = state
            .loaded
            .lock()
            .map(|g| g.as_ref().map_or(0, |l| l.sessions.len() as u32))
            .unwrap_or(0);
        match link.heartbeat(queue_depth).await {
            Ok(version) if Some(version) != known_version => match link.assignment().await {
                Ok(snapshot) => match apply(&state, &snapshot, &plan).await {
                    Ok(()) => known_version = Some(snapshot.version),
                    Err(e) => tracing::error!(error = %e, "applying the assignment failed"),
                },
                Err(e) => tracing::warn!(error = %e, "fetching the assignment failed"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(interval).await;
    }
}
