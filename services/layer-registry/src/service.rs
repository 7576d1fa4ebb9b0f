//! The `LayerRegistry` gRPC service: thin transport over the store and the pure modules.
//! Every mutating call is a signed envelope: signature (low-S, this network, this message
//! type), then timestamp window, then who may send it (admission, observers), then payload,
//! then the nonce claim inside the store's transaction. Nothing changes unless all of them
//! pass. Register also clamps claims to the configured caps and, before storing, checks
//! that the node answers at its endpoint.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::growth::ArchitectureMode;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, Verified, check_fresh, now_ms, sign, verify};
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::common::v1::{Role, SignedEnvelope};
use neuroshard_proto::registry::v1::layer_registry_server::LayerRegistry;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, AttestRequest, DeregisterRequest, DeregisterResponse, DescribeNodesRequest,
    DescribeNodesResponse, DrainRequest, DrainResponse, GetAssignmentRequest, HeartbeatRequest,
    HeartbeatResponse, ObservationsRequest, ObservationsResponse, RegisterRequest,
    RegisterResponse, RoutesRequest, RoutesResponse, UptimeAttestation, UptimeEpochRequest,
    UptimeEpochResponse, WatchRequest,
};
use neuroshard_runtime::telemetry::names::registry as names;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::RegistryConfig;
use crate::liveness::LivenessPolicy;
use crate::store::{Publication, Registration, Store};
use crate::stored::LoadedSpan;
use crate::trust::{ClaimCaps, GrowthEvidence};
use crate::{architecture, describe, probe, routes, snapshot, trust};

/// Shared state of one registry replica.
#[derive(Debug, Clone)]
pub struct RegistryService {
    store: Store,
    config: Arc<RegistryConfig>,
    mode: Arc<ArchitectureMode>,
    /// Node ids admitted (`None`: admission is open).
    admitted: Option<Arc<BTreeSet<String>>>,
    observers: Arc<BTreeSet<String>>,
    /// Keys that may drain any node.
    operators: Arc<BTreeSet<String>>,
    /// Signs uptime attestations (`None`: no `signing_key_file`, nothing is attested).
    attester: Option<Arc<Attester>>,
}

/// The registry's signing key and its nonces.
#[derive(Debug)]
struct Attester {
    key: NodeKey,
    nonces: NonceSource,
}

impl RegistryService {
    /// The service for a validated `config`.
    pub fn new(store: Store, config: Arc<RegistryConfig>) -> Result<Self> {
        let mode = Arc::new(config.architecture_mode());
        let admitted = config.admitted_ids()?.map(Arc::new);
        let observers = Arc::new(config.observers.iter().cloned().collect());
        let operators = Arc::new(config.operators.iter().cloned().collect());
        let attester = match &config.signing_key_file {
            Some(path) => {
                let key = NodeKey::load_or_create(path)?;
                tracing::info!(registry_id = %key.node_id(), "uptime attestations are signed");
                Some(Arc::new(Attester {
                    key,
                    nonces: NonceSource::new(),
                }))
            }
            None => None,
        };
        Ok(Self {
            store,
            config,
            mode,
            admitted,
            observers,
            operators,
            attester,
        })
    }

    fn uptime_epoch_ms(&self) -> i64 {
        // Validated to fit at start.
        i64::try_from(self.config.uptime_epoch_ms).unwrap_or(i64::MAX)
    }

    /// The signed attestation of `request`'s node's uptime in its epoch, once that is final.
    pub async fn attest(&self, request: &AttestRequest) -> Result<SignedEnvelope> {
        let attester = self.attester.as_ref().ok_or_else(|| {
            Error::failed_precondition(
                "this registry has no signing_key_file: it attests no uptime",
            )
        })?;
        if !neuroshard_common::identity::is_node_id(&request.node_id) {
            return Err(Error::invalid_argument(format!(
                "node_id: `{}` is not a node id (40 lowercase hex digits)",
                request.node_id
            )));
        }
        let epoch_ms = self.uptime_epoch_ms();
        let start = i64::try_from(request.epoch_start_unix_ms)
            .map_err(|_| Error::invalid_argument("epoch_start_unix_ms: out of range"))?;
        let dead_after = i64::try_from(self.config.dead_after_ms).unwrap_or(i64::MAX);
        let (figures, now) = self.store.uptime(&request.node_id, epoch_ms, start).await?;
        crate::uptime::check_final(start, epoch_ms, dead_after, now)?;
        let (uptime_ms, heartbeats) = figures.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "node {} sent no heartbeat in the epoch starting at unix ms {start}",
                    request.node_id
                ),
            )
        })?;
        let attestation = UptimeAttestation {
            registry_id: attester.key.node_id().to_string(),
            node_id: request.node_id.clone(),
            epoch_start_unix_ms: request.epoch_start_unix_ms,
            epoch_ms: epoch_ms as u64,
            uptime_ms: uptime_ms.min(epoch_ms as u64),
            heartbeats,
        };
        sign(
            &attester.key,
            &self.config.network_id,
            "UptimeAttestation",
            attester.nonces.next(),
            now_ms(),
            attestation.encode_to_vec(),
        )
    }

    fn liveness(&self) -> LivenessPolicy {
        LivenessPolicy {
            suspect_after_ms: self.config.suspect_after_ms,
            dead_after_ms: self.config.dead_after_ms,
        }
    }

    /// Descriptions of `ids` (every node when empty) against the current assignment.
    pub async fn describe(&self, ids: &[String]) -> Result<DescribeNodesResponse> {
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| !neuroshard_common::identity::is_node_id(id))
        {
            return Err(Error::invalid_argument(format!(
                "node_ids[{i}]: `{id}` is not a node id (40 lowercase hex digits)"
            )));
        }
        let assignment = self.current().await?;
        let nodes = self.store.nodes().await?;
        Ok(DescribeNodesResponse {
            nodes: describe::describe(&nodes, &assignment, self.liveness(), ids),
            assignment_version: assignment.version,
        })
    }

    fn caps(&self) -> ClaimCaps {
        ClaimCaps {
            max_usable_memory_bytes: self.config.max_usable_memory_bytes,
            max_tokens_per_second: self.config.max_tokens_per_second,
        }
    }

    /// Decides the architecture (fixed, or from live capacity with growth), recomputes the
    /// assignment, and publishes both if they changed; returns the current assignment.
    pub async fn publish(&self) -> Result<AssignmentSnapshot> {
        let config = self.config.clone();
        let liveness = self.liveness();
        let evidence = GrowthEvidence {
            min_node_age_ms: config.architecture.growth_min_node_age_ms,
            observers_configured: !config.observers.is_empty(),
        };
        let published = self
            .store
            .publish(|nodes, stored, previous| {
                let (states, live) = snapshot::live_capacities(nodes, liveness);
                let verified = evidence.verified(nodes, &live);
                let decision = architecture::decide(
                    &self.mode,
                    stored,
                    &live,
                    &verified,
                    config.bytes_per_param,
                    config.min_replicas,
                );
                if let Some(reason) = &decision.waiting {
                    tracing::debug!(%reason, "no architecture yet");
                }
                // An unreadable previous assignment only costs stickiness: place from scratch.
                let previous = previous.and_then(|bytes| AssignmentSnapshot::decode(bytes).ok());
                let held = snapshot::held_spans(previous.as_ref(), decision.architecture.as_ref());
                let snapshot = snapshot::build(
                    nodes,
                    &states,
                    &live,
                    decision.architecture.as_ref(),
                    &held,
                    config.bytes_per_param,
                    config.min_replicas,
                )?;
                Ok(Publication {
                    snapshot: snapshot.encode_to_vec(),
                    architecture: decision.architecture.filter(|_| decision.changed),
                    growth_pending: decision.growth_pending,
                })
            })
            .await?;
        if let Some(arch) = &published.new_architecture {
            tracing::info!(
                version = arch.version,
                num_layers = arch.config.num_layers,
                hidden_size = arch.config.hidden_size,
                depths = ?arch.depths(),
                "architecture published"
            );
        }
        let snapshot = decode_snapshot(published.version, &published.snapshot)?;
        record_snapshot_metrics(&snapshot);
        Ok(snapshot)
    }

    async fn current(&self) -> Result<AssignmentSnapshot> {
        match self.store.published().await? {
            Some((version, bytes)) => decode_snapshot(version, &bytes),
            None => self.publish().await,
        }
    }

    /// Checks signature, timestamp and payload of a `message_name` envelope.
    fn open<M: Message + Default>(
        &self,
        envelope: &SignedEnvelope,
        message_name: &str,
    ) -> Result<(Verified, M)> {
        let verified = verify(envelope, &self.config.network_id, message_name)?;
        // The nonce is checked against stored state by the store; here only the clock.
        check_fresh(
            None,
            verified.nonce,
            verified.timestamp_ms,
            now_ms(),
            self.config.clock_window_ms,
        )?;
        let message = M::decode(verified.payload.as_slice()).map_err(|e| {
            Error::invalid_argument(format!("payload: not a valid {message_name}: {e}"))
        })?;
        Ok((verified, message))
    }
}

fn decode_snapshot(version: u64, bytes: &[u8]) -> Result<AssignmentSnapshot> {
    let mut snapshot = AssignmentSnapshot::decode(bytes)
        .map_err(|e| Error::internal(format!("stored assignment is unreadable: {e}")))?;
    snapshot.version = version;
    Ok(snapshot)
}

fn validate_registration(request: &RegisterRequest) -> Result<()> {
    if !(request.endpoint.starts_with("http://") || request.endpoint.starts_with("https://")) {
        return Err(Error::invalid_argument(format!(
            "endpoint: `{}` must be an http:// or https:// URL",
            request.endpoint
        )));
    }
    let capacity = request
        .capacity
        .as_ref()
        .ok_or_else(|| Error::invalid_argument("capacity: missing"))?;
    if capacity.usable_memory_bytes == 0 {
        return Err(Error::invalid_argument(
            "capacity.usable_memory_bytes: must be positive",
        ));
    }
    if !(capacity.tokens_per_second.is_finite() && capacity.tokens_per_second >= 0.0) {
        return Err(Error::invalid_argument(
            "capacity.tokens_per_second: must be a finite number >= 0",
        ));
    }
    match Role::try_from(request.preferred_role) {
        Ok(Role::Unspecified | Role::Driver | Role::Worker | Role::Validator) => Ok(()),
        _ => Err(Error::invalid_argument(format!(
            "preferred_role: {} is not a role a node can prefer (unspecified, driver, worker, validator)",
            request.preferred_role
        ))),
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<AssignmentSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl LayerRegistry for RegistryService {
    async fn register(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let (verified, body) =
            self.open::<RegisterRequest>(request.get_ref(), "RegisterRequest")?;
        trust::admit(self.admitted.as_deref(), &verified.node_id)?;
        validate_registration(&body)?;
        let capacity = body.capacity.unwrap_or_default();
        let claims = self
            .caps()
            .clamp(capacity.usable_memory_bytes, capacity.tokens_per_second);
        if claims.clamped {
            tracing::info!(
                node_id = %verified.node_id,
                claimed_memory = capacity.usable_memory_bytes,
                claimed_tokens_per_second = capacity.tokens_per_second,
                memory = claims.usable_memory_bytes,
                tokens_per_second = claims.tokens_per_second,
                "claims above the configured caps clamped"
            );
        }
        // A replay is refused before the registry dials anything on its behalf; the store's
        // claim below stays the atomic check.
        if let Some(last) = self.store.last_nonce(&verified.node_id).await?
            && verified.nonce <= last
        {
            return Err(Error::failed_precondition(format!(
                "nonce: {} is not greater than the last accepted nonce (replay?)",
                verified.nonce
            ))
            .into());
        }
        if self.config.endpoint_probe_timeout_ms > 0 {
            probe::check_endpoint(
                &self.config.tls,
                &body.endpoint,
                &verified.node_id,
                Duration::from_millis(self.config.endpoint_probe_timeout_ms),
            )
            .await?;
        }
        self.store
            .register(&Registration {
                node_id: &verified.node_id,
                public_key: &verified.signer,
                nonce: verified.nonce,
                endpoint: &body.endpoint,
                usable_memory_bytes: claims.usable_memory_bytes,
                device: capacity.device,
                tokens_per_second: claims.tokens_per_second,
                payout_address: &body.payout_address,
                preferred_role: body.preferred_role,
            })
            .await?;
        let assignment = self.publish().await?;
        tracing::info!(node_id = %verified.node_id, version = assignment.version, "node registered");
        Ok(Response::new(RegisterResponse {
            node_id: verified.node_id,
            assignment: Some(assignment),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let (verified, body) =
            self.open::<HeartbeatRequest>(request.get_ref(), "HeartbeatRequest")?;
        // A node taken off the allow-list (config changed) stops heartbeating and goes dead.
        trust::admit(self.admitted.as_deref(), &verified.node_id)?;
        self.store
            .heartbeat(
                &verified.node_id,
                verified.nonce,
                body.queue_depth,
                body.loaded_span.map(|span| LoadedSpan {
                    start: span.start,
                    end: span.end,
                    architecture_version: body.loaded_architecture_version,
                }),
                self.uptime_epoch_ms(),
                i64::try_from(self.config.dead_after_ms).unwrap_or(i64::MAX),
            )
            .await?;
        let assignment = self.current().await?;
        Ok(Response::new(HeartbeatResponse {
            assignment_version: assignment.version,
        }))
    }

    async fn drain(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<DrainResponse>, Status> {
        let (verified, body) = self.open::<DrainRequest>(request.get_ref(), "DrainRequest")?;
        let node_id = if body.node_id.is_empty() {
            verified.node_id.clone()
        } else {
            body.node_id
        };
        if node_id != verified.node_id && !self.operators.contains(&verified.node_id) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "drain: only the node itself or one of this registry's operators may drain it",
            )
            .into());
        }
        // What it holds now is what the drain must hand over.
        let held = self
            .current()
            .await?
            .nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .and_then(|n| n.span)
            .map(|s| (s.start, s.end));
        self.store
            .drain(&node_id, &verified.node_id, verified.nonce, held)
            .await?;
        let assignment = self.publish().await?;
        let description = self.describe(std::slice::from_ref(&node_id)).await?;
        let pending = description
            .nodes
            .into_iter()
            .next()
            .map(|d| d.drain_pending_layers)
            .unwrap_or_default();
        tracing::info!(%node_id, by = %verified.node_id, version = assignment.version, pending = pending.len(), "node draining");
        Ok(Response::new(DrainResponse {
            pending_layers: pending,
        }))
    }

    async fn deregister(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let (verified, _) =
            self.open::<DeregisterRequest>(request.get_ref(), "DeregisterRequest")?;
        self.store
            .deregister(&verified.node_id, verified.nonce)
            .await?;
        self.publish().await?;
        tracing::info!(node_id = %verified.node_id, "node deregistered");
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn get_assignment(
        &self,
        _: Request<GetAssignmentRequest>,
    ) -> Result<Response<AssignmentSnapshot>, Status> {
        Ok(Response::new(self.current().await?))
    }

    async fn routes(
        &self,
        request: Request<RoutesRequest>,
    ) -> Result<Response<RoutesResponse>, Status> {
        let mut assignment = self.current().await?;
        // Queue depths change with every heartbeat and are not part of the published
        // assignment; take them fresh.
        for row in self.store.nodes().await? {
            if let Some(node) = assignment
                .nodes
                .iter_mut()
                .find(|n| n.node_id == row.node_id)
            {
                node.queue_depth = row.queue_depth;
            }
        }
        let max = match request.get_ref().max_routes {
            0 => 16,
            n => n as usize,
        };
        Ok(Response::new(RoutesResponse {
            assignment_version: assignment.version,
            routes: routes::routes(&assignment, max),
        }))
    }

    async fn report_observations(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<ObservationsResponse>, Status> {
        let (verified, body) =
            self.open::<ObservationsRequest>(request.get_ref(), "ObservationsRequest")?;
        if !self.observers.contains(&verified.node_id) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "observations: the signer is not one of this registry's observers",
            )
            .into());
        }
        let observations = trust::validate_observations(&body)?;
        let stored = self
            .store
            .observe(&verified.node_id, verified.nonce, observations)
            .await?;
        self.publish().await?;
        tracing::debug!(observer = %verified.node_id, reported = observations.len(), stored, "observations stored");
        Ok(Response::new(ObservationsResponse {}))
    }

    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<SignedEnvelope>, Status> {
        Ok(Response::new(
            RegistryService::attest(self, request.get_ref()).await?,
        ))
    }

    async fn uptime_epoch(
        &self,
        _: Request<UptimeEpochRequest>,
    ) -> Result<Response<UptimeEpochResponse>, Status> {
        Ok(Response::new(UptimeEpochResponse {
            epoch_ms: self.config.uptime_epoch_ms,
            final_after_ms: self.config.dead_after_ms,
            attests: self.attester.is_some(),
        }))
    }

    async fn describe_nodes(
        &self,
        request: Request<DescribeNodesRequest>,
    ) -> Result<Response<DescribeNodesResponse>, Status> {
        Ok(Response::new(
            self.describe(&request.get_ref().node_ids).await?,
        ))
    }

    type WatchStream = SnapshotStream;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let service = self.clone();
        let poll = Duration::from_millis(self.config.watch_poll_ms.max(10));
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let next = service.current().await.map_err(Status::from);
                let changed = match &next {
                    Ok(s) => last != Some(s.version),
                    Err(_) => true,
                };
                if changed {
                    if let Ok(s) = &next {
                        last = Some(s.version);
                    }
                    if tx.send(next).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Gauges describing the published assignment: what an operator alerts on (a deficit that does
/// not go away, nodes turning suspect).
fn record_snapshot_metrics(snapshot: &AssignmentSnapshot) {
    use neuroshard_proto::registry::v1::NodeState;
    metrics::gauge!(names::ASSIGNMENT_VERSION).set(snapshot.version as f64);
    for state in [
        NodeState::Live,
        NodeState::Suspect,
        NodeState::Dead,
        NodeState::Draining,
    ] {
        let count = snapshot
            .nodes
            .iter()
            .filter(|n| n.state == state as i32)
            .count();
        metrics::gauge!(names::NODES, "state" => state.as_str_name().trim_start_matches("NODE_STATE_").to_lowercase())
            .set(count as f64);
    }
    let missing: u32 = snapshot.deficits.iter().map(|d| d.missing).sum();
    metrics::gauge!(names::REPLICA_DEFICIT).set(f64::from(missing));
    metrics::gauge!(names::PIPELINES).set(snapshot.pipelines.len() as f64);
    if let Some(architecture) = &snapshot.architecture {
        metrics::gauge!(names::MODEL_LAYERS).set(f64::from(architecture.num_layers));
    }
}
