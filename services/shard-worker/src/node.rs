//! The node's life with the registry: measure, register (signed), heartbeat, and load the span
//! the registry assigns, reloading when the assignment changes.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::{Error, ModelConfig, Result};
use neuroshard_model::growth::span_of_architecture;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{Shard, ShardInput, ShardSpec, init};
use neuroshard_proto::common::v1::{LayerSpan, Role};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, DeregisterRequest, DescribeNodesRequest, Device as ProtoDevice,
    DrainRequest, GetAssignmentRequest, HeartbeatRequest, NodeDescription, NodeState,
    RegisterRequest,
};
use prost::Message;
use tonic::transport::Channel;

use crate::state::{Loaded, WorkerState};

/// How this node loads weights.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub checkpoint: Option<std::path::PathBuf>,
    pub init_seed: u64,
    pub device: Device,
    pub kind: Kind,
    /// The latest global weights fetched from the aggregators for this node's span.
    pub global: Arc<RwLock<Option<Arc<GlobalWeights>>>>,
}

/// A span's global weights as an aggregator published them at the end of `round`.
#[derive(Debug)]
pub struct GlobalWeights {
    pub round: u64,
    pub span: (u32, u32),
    pub architecture_version: u64,
    /// f32 values by name.
    pub tensors: BTreeMap<String, Vec<f32>>,
}

impl LoadPlan {
    pub fn global(&self) -> Option<Arc<GlobalWeights>> {
        self.global
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_global(&self, weights: GlobalWeights) {
        *self.global.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(weights));
    }
}

/// Loads layers [start, end) of the published architecture `arch` as `plan` says (see
/// `neuroshard_model::growth::span_of_architecture`), with the global weights fetched for
/// exactly this span over them; returns the aggregator round the weights are of (0 without).
pub fn load_span_at(
    arch: &ArchitectureState,
    start: u32,
    end: u32,
    plan: &LoadPlan,
) -> Result<(Shard, u64)> {
    let shard = span_of_architecture(
        arch,
        start,
        end,
        plan.checkpoint.as_deref(),
        plan.init_seed,
        plan.device,
        plan.kind,
    )
    .map_err(Error::from)?;
    let Some(global) = plan
        .global()
        .filter(|g| g.span == (start, end) && g.architecture_version == arch.version)
    else {
        return Ok((shard, 0));
    };
    let _guard = neuroshard_model::tch::no_grad_guard();
    for (name, mut var) in shard.var_store().variables() {
        let values = global.tensors.get(&name).ok_or_else(|| {
            Error::internal(format!(
                "the global weights of round {} have no {name}",
                global.round
            ))
        })?;
        if values.len() as i64 != var.numel() as i64 {
            return Err(Error::internal(format!(
                "global {name}: {} values, the span's tensor has {}",
                values.len(),
                var.numel()
            )));
        }
        let source = Tensor::from_slice(values)
            .view(var.size().as_slice())
            .to_kind(var.kind())
            .to_device(var.device());
        var.f_copy_(&source)
            .map_err(|e| Error::internal(format!("{name}: {e}")))?;
    }
    Ok((shard, global.round))
}

/// [`load_span_at`] without the round.
pub fn load_span(arch: &ArchitectureState, start: u32, end: u32, plan: &LoadPlan) -> Result<Shard> {
    load_span_at(arch, start, end, plan).map(|(shard, _)| shard)
}

/// Tokens per second through one decoder layer of `config` on this device (64-token chunks):
/// the honest throughput this node reports. Measured on the layer shape of the architecture
/// the node serves (see [`Advertised`]), since a layer's cost is all in its width.
pub fn measure_throughput(config: &ModelConfig, device: Device, kind: Kind) -> Result<f64> {
    let spec = ShardSpec {
        start: 0,
        end: 1,
        embed: false,
        head: false,
    };
    let layer = ModelConfig {
        num_layers: 1,
        ..config.clone()
    };
    let mut shard = Shard::new(&layer, spec, device, kind).map_err(Error::from)?;
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
    if device.is_cuda() {
        // Kernels run asynchronously: the clock stops when the device is done.
        neuroshard_model::tch::Cuda::synchronize(device_index(device));
    }
    Ok((rounds * seq) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

fn device_index(device: Device) -> i64 {
    match device {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

/// Whether a decoder layer of `a` costs what one of `b` does: the same shape, whatever the
/// depth or vocabulary.
pub fn same_layer_shape(a: &ModelConfig, b: &ModelConfig) -> bool {
    (
        a.hidden_size,
        a.num_heads,
        a.num_kv_heads,
        a.intermediate_size,
    ) == (
        b.hidden_size,
        b.num_heads,
        b.num_kv_heads,
        b.intermediate_size,
    )
}

/// What this node tells the registry about itself, and the model shape its throughput was
/// measured on.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub endpoint: String,
    pub capacity: Capacity,
    pub measured_on: ModelConfig,
}

impl Advertised {
    /// Measures throughput on `shape` (off the async runtime) and advertises it.
    pub async fn measure(
        endpoint: String,
        usable_memory_bytes: u64,
        shape: ModelConfig,
        plan: &LoadPlan,
    ) -> Result<Self> {
        let tokens_per_second = measure_on(&shape, plan).await?;
        Ok(Self {
            endpoint,
            capacity: Capacity {
                usable_memory_bytes,
                device: if plan.device.is_cuda() {
                    ProtoDevice::Cuda
                } else {
                    ProtoDevice::Cpu
                } as i32,
                tokens_per_second,
            },
            measured_on: shape,
        })
    }

    /// If the published architecture's layers differ from the shape measured on, measures
    /// again on them; whether the figure changed (and must be registered again).
    pub async fn follow_architecture(
        &mut self,
        snapshot: &AssignmentSnapshot,
        plan: &LoadPlan,
    ) -> Result<bool> {
        let Some(arch) = &snapshot.architecture else {
            return Ok(false);
        };
        let config = ArchitectureState::from_proto(arch)?.config;
        if same_layer_shape(&config, &self.measured_on) {
            return Ok(false);
        }
        self.capacity.tokens_per_second = measure_on(&config, plan).await?;
        tracing::info!(
            hidden = config.hidden_size,
            tokens_per_second = self.capacity.tokens_per_second,
            "throughput measured on the architecture's layer shape"
        );
        self.measured_on = config;
        Ok(true)
    }
}

async fn measure_on(shape: &ModelConfig, plan: &LoadPlan) -> Result<f64> {
    let (shape, device, kind) = (shape.clone(), plan.device, plan.kind);
    tokio::task::spawn_blocking(move || measure_throughput(&shape, device, kind))
        .await
        .map_err(|e| Error::internal(format!("measuring task failed: {e}")))?
}

/// Signs messages for the registry with this node's key. Clones share the nonce source, so
/// the heartbeat loop and the leaving path never sign the same nonce.
#[derive(Debug, Clone)]
pub struct RegistryLink {
    pub client: LayerRegistryClient<Channel>,
    pub key: Arc<NodeKey>,
    pub network_id: String,
    /// The role registrations ask for.
    pub preferred_role: Role,
    nonces: Arc<NonceSource>,
}

impl RegistryLink {
    pub fn new(
        client: LayerRegistryClient<Channel>,
        key: Arc<NodeKey>,
        network_id: String,
        preferred_role: Role,
    ) -> Self {
        Self {
            client,
            key,
            network_id,
            preferred_role,
            nonces: Arc::new(NonceSource::new()),
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
        advertised: &Advertised,
    ) -> Result<AssignmentSnapshot, tonic::Status> {
        let request = RegisterRequest {
            endpoint: advertised.endpoint.clone(),
            capacity: Some(advertised.capacity),
            payout_address: String::new(),
            preferred_role: self.preferred_role as i32,
        };
        let envelope = self.envelope("RegisterRequest", &request)?;
        let response = self.client.register(envelope).await?.into_inner();
        response
            .assignment
            .ok_or_else(|| tonic::Status::internal("registry sent no assignment"))
    }

    /// Reports liveness, queue depth and what is loaded (`state`'s span); the assignment
    /// version the registry is at.
    pub async fn heartbeat(&mut self, state: &WorkerState) -> Result<u64, tonic::Status> {
        let loaded = state.loaded();
        let request = HeartbeatRequest {
            queue_depth: u32::try_from(state.session_count()).unwrap_or(u32::MAX),
            loaded_span: loaded.as_ref().map(|l| LayerSpan {
                start: u32::try_from(l.spec.start).unwrap_or(0),
                end: u32::try_from(l.spec.end).unwrap_or(0),
            }),
            loaded_architecture_version: loaded.as_ref().map_or(0, |l| l.architecture.version),
        };
        let envelope = self.envelope("HeartbeatRequest", &request)?;
        Ok(self
            .client
            .heartbeat(envelope)
            .await?
            .into_inner()
            .assignment_version)
    }

    /// Asks the registry to move this node's layers elsewhere; the layers still pending.
    pub async fn drain(&mut self) -> Result<Vec<u32>, tonic::Status> {
        let envelope = self.envelope("DrainRequest", &DrainRequest::default())?;
        Ok(self
            .client
            .drain(envelope)
            .await?
            .into_inner()
            .pending_layers)
    }

    pub async fn deregister(&mut self) -> Result<(), tonic::Status> {
        let envelope = self.envelope("DeregisterRequest", &DeregisterRequest {})?;
        self.client.deregister(envelope).await?;
        Ok(())
    }

    /// What the registry says of this node.
    pub async fn describe(&mut self) -> Result<NodeDescription, tonic::Status> {
        let id = self.key.node_id().to_string();
        self.client
            .describe_nodes(DescribeNodesRequest { node_ids: vec![id] })
            .await?
            .into_inner()
            .nodes
            .into_iter()
            .next()
            .ok_or_else(|| tonic::Status::internal("registry described no node"))
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
    // A draining node keeps serving what it holds while others load it.
    if mine.is_some_and(|n| n.state == NodeState::Draining as i32) {
        return Ok(());
    }
    let span = mine.and_then(|n| n.span).filter(|_| arch.is_some());
    let arch_version = arch.as_ref().map(|a| a.version);
    let current = state.loaded();
    let wanted = span.map(|s| (i64::from(s.start), i64::from(s.end)));
    let unchanged = match (&current, wanted) {
        (Some(l), Some((start, end))) => {
            l.spec.start == start
                && l.spec.end == end
                && Some(l.architecture.version) == arch_version
        }
        (None, None) => true,
        _ => false,
    };
    if unchanged {
        if let Some(l) = current {
            l.set_assignment_version(snapshot.version);
        }
        return Ok(());
    }
    drop(current);
    let loaded = match (span, arch) {
        (Some(s), Some(arch)) => {
            let plan = plan.clone();
            let layers = arch.config.num_layers;
            let arch_version = arch.version;
            let arch = Arc::new(arch);
            let (shard, weights_round) = {
                let arch = arch.clone();
                tokio::task::spawn_blocking(move || load_span_at(&arch, s.start, s.end, &plan))
                    .await
                    .map_err(|e| Error::internal(format!("loading task failed: {e}")))??
            };
            tracing::info!(node_id = %state.node_id, start = s.start, end = s.end, layers, arch_version, version = snapshot.version, weights_round, "span loaded");
            Some(Loaded::start(
                shard,
                state.new_sessions(),
                snapshot.version,
                arch,
                weights_round,
                state.compute,
            )?)
        }
        _ => {
            tracing::info!(node_id = %state.node_id, version = snapshot.version, "no span assigned");
            None
        }
    };
    state.set_loaded(loaded);
    Ok(())
}

/// Heartbeats every `interval` and follows assignment changes until the task is dropped;
/// when the architecture's layer shape changes, measures throughput again and registers the
/// new figure.
pub async fn follow(
    state: Arc<WorkerState>,
    mut link: RegistryLink,
    mut advertised: Advertised,
    plan: LoadPlan,
    interval: Duration,
) {
    let mut known_version = None;
    loop {
        match link.heartbeat(&state).await {
            Ok(version) if Some(version) != known_version => match link.assignment().await {
                Ok(snapshot) => {
                    match settle(&state, &mut link, &mut advertised, &snapshot, &plan).await {
                        Ok(version) => known_version = Some(version),
                        Err(e) => tracing::error!(error = %e, "applying the assignment failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "fetching the assignment failed"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Applies `snapshot`, and registers again if the architecture it publishes changed the
/// throughput this node measures (applying what that registration answers); the assignment
/// version this node is at.
pub async fn settle(
    state: &Arc<WorkerState>,
    link: &mut RegistryLink,
    advertised: &mut Advertised,
    snapshot: &AssignmentSnapshot,
    plan: &LoadPlan,
) -> Result<u64> {
    apply(state, snapshot, plan).await?;
    if !advertised.follow_architecture(snapshot, plan).await? {
        return Ok(snapshot.version);
    }
    let snapshot = link.register(advertised).await.map_err(|status| {
        Error::new(
            neuroshard_common::ErrorKind::Unavailable,
            format!("registering the new throughput: {}", status.message()),
        )
    })?;
    apply(state, &snapshot, plan).await?;
    Ok(snapshot.version)
}

/// Leaves the swarm without dropping what this node serves: drains (the registry assigns its
/// layers to others while it keeps serving), waits until each layer it held has two other
/// loaded holders, until no other node is loading them any more (nothing left to wait for),
/// or `timeout`; then stops `heartbeats` and deregisters. A zero `timeout` deregisters at
/// once. Failures are logged: a node that cannot reach its registry still exits.
pub async fn leave(
    mut link: RegistryLink,
    timeout: Duration,
    poll: Duration,
    heartbeats: tokio::task::AbortHandle,
) {
    if !timeout.is_zero() {
        drain_for(&mut link, timeout, poll).await;
    }
    // A heartbeat after the deregistration would fail; none is sent.
    heartbeats.abort();
    match link.deregister().await {
        Ok(()) => tracing::info!("deregistered"),
        Err(e) => tracing::warn!(error = %e.message(), "deregistering failed"),
    }
}

async fn drain_for(link: &mut RegistryLink, timeout: Duration, poll: Duration) {
    let started = Instant::now();
    match link.drain().await {
        Ok(pending) => tracing::info!(pending = pending.len(), "draining"),
        Err(e) => {
            tracing::warn!(error = %e.message(), "draining failed; leaving without it");
            return;
        }
    }
    loop {
        match link.describe().await {
            Ok(d) if d.drain_pending_layers.is_empty() => {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "drained: every layer has two other loaded holders"
                );
                return;
            }
            Ok(d) if !d.drain_progressing => {
                tracing::warn!(pending = ?d.drain_pending_layers, "no other node is loading this node's layers; leaving with them short of holders");
                return;
            }
            Ok(d) if started.elapsed() >= timeout => {
                tracing::warn!(pending = ?d.drain_pending_layers, timeout_ms = timeout.as_millis() as u64, "drain timed out; leaving with layers short of holders");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e.message(), "asking the registry how the drain goes failed; leaving");
                return;
            }
        }
        tokio::time::sleep(poll).await;
    }
}
