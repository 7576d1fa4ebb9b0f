//! Observation reports: what this gateway measured of each node's decode hops, signed with
//! the gateway's own key and sent to the registry (`ReportObservations`), so that routing and
//! placement weigh measured throughput rather than what nodes claim. The registry accepts
//! reports only from the keys its configuration names as observers; a gateway without a key
//! reports nothing.

use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::{Error, ErrorKind};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{NodeObservation, ObservationsRequest};
use prost::Message;
use tonic::transport::Channel;

use super::state::EngineState;
use super::stats::Observation;

/// The envelope's message name, as the registry opens it.
const MESSAGE: &str = "ObservationsRequest";

/// How and how often this gateway reports.
#[derive(Clone)]
pub struct ObserverConfig {
    pub key: Arc<NodeKey>,
    /// The swarm's network id: part of every signature.
    pub network_id: String,
    pub interval: Duration,
    /// Decode hops a node needs since the last report to be reported.
    pub min_samples: u32,
}

impl std::fmt::Debug for ObserverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key's Debug shows only its node id; nothing secret reaches a log.
        f.debug_struct("ObserverConfig")
            .field("observer", &self.key.node_id())
            .field("network_id", &self.network_id)
            .field("interval", &self.interval)
            .field("min_samples", &self.min_samples)
            .finish()
    }
}

/// The request a set of observations becomes. Pure.
pub fn request(observations: &[Observation]) -> ObservationsRequest {
    ObservationsRequest {
        nodes: observations
            .iter()
            .map(|o| NodeObservation {
                node_id: o.node_id.clone(),
                tokens_per_second: o.tokens_per_second,
                samples: o.samples,
            })
            .collect(),
    }
}

/// Reports every `interval` until the engine is dropped (the task is aborted with it).
pub(super) async fn report_loop(engine: Arc<EngineState>, observer: ObserverConfig) {
    let nonces = NonceSource::new();
    // One connection to the registry, made when first needed and again after a failure.
    let mut registry: Option<LayerRegistryClient<Channel>> = None;
    let mut ticker = tokio::time::interval(observer.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // Said once per kind of failure, not at every tick.
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let observations = engine.stats().take_observations(observer.min_samples);
        if observations.is_empty() {
            continue;
        }
        match report(&engine, &mut registry, &observer, &nonces, &observations).await {
            Ok(()) => {
                tracing::debug!(nodes = observations.len(), "observations reported");
                last_error = None;
            }
            Err(e) => {
                // A refusal came over a working connection; anything else may be the link.
                if e.kind != ErrorKind::PermissionDenied {
                    registry = None;
                }
                if last_error.as_deref() != Some(e.message.as_str()) {
                    tracing::warn!(
                        observer = %observer.key.node_id(),
                        error = %e.message,
                        "the registry did not take this gateway's observations"
                    );
                }
                last_error = Some(e.message);
            }
        }
    }
}

async fn report(
    engine: &EngineState,
    registry: &mut Option<LayerRegistryClient<Channel>>,
    observer: &ObserverConfig,
    nonces: &NonceSource,
    observations: &[Observation],
) -> Result<(), Error> {
    let envelope = sign(
        &observer.key,
        &observer.network_id,
        MESSAGE,
        nonces.next(),
        now_ms(),
        request(observations).encode_to_vec(),
    )?;
    let client = match registry {
        Some(client) => client,
        None => {
            let channel = engine.config.tls.connect(&engine.config.registry).await?;
            registry.insert(LayerRegistryClient::new(channel))
        }
    };
    client.report_observations(envelope).await.map_err(|s| {
        let kind = match s.code() {
            tonic::Code::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, s.message().to_string())
    })?;
    Ok(())
}
