//! The DiLoCo aggregator: rounds of the outer loop over the pipelines' pseudo-gradients.
//!
//! Pure policy (no I/O, tested directly):
//! - [`rounds`]: the open round, who held which span in it (from the registry), the checks a
//!   submission's header must pass, and when the round is complete;
//! - [`closing`]: closing a round — screening, the held-out scores weighed, the robust rule
//!   per layer with the Byzantine bound the contributors allow, the outer step from θ_start
//!   (the rules themselves live in `neuroshard_aggregation`).
//!
//! I/O and wiring:
//! - [`model`]: the whole model in f32, a checkpoint per published round, held-out scoring;
//! - [`store`]: PostgreSQL (rounds, outer state, nonces, receipts, evidence);
//! - [`aggregator`]: state and the round life cycle (close, sign, persist, open the next);
//! - [`service`]: the gRPC adapter; [`config`]: layered configuration;
//! - [`run`]: starts (or resumes) from the database and serves until `shutdown`.

pub mod aggregator;
pub mod closing;
pub mod config;
pub mod model;
pub mod rounds;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::Error;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::identity::NodeKey;
use neuroshard_model::tokenizer::TextTokenizer;
use neuroshard_proto::aggregator::v1::RoundReport;
use neuroshard_proto::aggregator::v1::aggregator_server::AggregatorServer;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{AssignmentSnapshot, GetAssignmentRequest};
use tokio::sync::watch;

pub use config::AggregatorConfig;

use crate::aggregator::{Aggregator, Start};
use crate::model::{GlobalModel, HeldOut, round_dir};
use crate::store::Store;

/// How often the registry's assignment is read, and the round checked for closing.
const ASSIGNMENT_POLL: Duration = Duration::from_millis(500);
const ROUND_TICK: Duration = Duration::from_millis(200);

/// Follows the registry's assignment into a watch channel until the receiver is gone.
fn follow_registry(config: &AggregatorConfig) -> watch::Receiver<Option<Arc<AssignmentSnapshot>>> {
    let (tx, rx) = watch::channel(None);
    let (tls, url) = (config.tls.clone(), config.registry.clone());
    tokio::spawn(async move {
        let mut client = None;
        loop {
            if tx.is_closed() {
                return;
            }
            if client.is_none() {
                match tls.connect(&url).await {
                    Ok(channel) => client = Some(LayerRegistryClient::new(channel)),
                    Err(e) => tracing::warn!(error = %e, "connecting to the registry"),
                }
            }
            if let Some(c) = client.as_mut() {
                match c.get_assignment(GetAssignmentRequest {}).await {
                    Ok(snapshot) => {
                        tx.send_replace(Some(Arc::new(snapshot.into_inner())));
                    }
                    Err(e) => tracing::debug!(error = %e.message(), "reading the assignment"),
                }
            }
            tokio::time::sleep(ASSIGNMENT_POLL).await;
        }
    });
    rx
}

/// The architecture the registry publishes, once it does.
async fn architecture(
    assignments: &mut watch::Receiver<Option<Arc<AssignmentSnapshot>>>,
) -> Result<ArchitectureState, Error> {
    loop {
        let published = assignments
            .borrow_and_update()
            .as_ref()
            .and_then(|s| s.architecture.clone());
        if let Some(arch) = published {
            return ArchitectureState::from_proto(&arch);
        }
        assignments
            .changed()
            .await
            .map_err(|_| Error::internal("the registry follower stopped"))?;
    }
}

/// Where to start: the published round and the open one from the database, or round 0 from
/// the checkpoint or seed. A round left open by a previous run (killed mid-round) is closed
/// without change — its submissions are lost with that process — and the next one opens.
async fn start(
    config: &AggregatorConfig,
    store: &Store,
    arch: &ArchitectureState,
    snapshot: Option<Arc<AssignmentSnapshot>>,
    aggregator_id: &str,
) -> Result<Start, Error> {
    let num_layers = u32::try_from(arch.config.num_layers)
        .map_err(|_| Error::invalid_argument("num_layers out of range"))?;
    let first_round =
        |number: u64| aggregator::opening_round(config, number, num_layers, snapshot.as_deref());
    let Some(published) = store.published().await? else {
        let (arch, checkpoint, seed) = (arch.clone(), config.checkpoint.clone(), config.init_seed);
        let model = tokio::task::spawn_blocking(move || {
            GlobalModel::initial(&arch, checkpoint.as_deref(), seed)
        })
        .await
        .map_err(|e| Error::internal(format!("building round 0: {e}")))??;
        let dir = round_dir(&config.state_dir, 0);
        model.save(&dir, tokenizer(config)?.as_ref())?;
        let open = first_round(1);
        store.genesis(&dir.to_string_lossy(), &open).await?;
        tracing::info!(
            aggregator_id,
            num_layers,
            "round 0 written from the {}",
            if config.checkpoint.is_some() {
                "checkpoint"
            } else {
                "seed"
            }
        );
        let (momentum, reference) = Default::default();
        return Ok(Start {
            model,
            open,
            published: 0,
            momentum,
            reference,
        });
    };
    let dir = published.weights_dir.clone().ok_or_else(|| {
        Error::internal(format!(
            "round {} is closed but names no weights",
            published.round
        ))
    })?;
    let model = {
        let dir = std::path::PathBuf::from(&dir);
        tokio::task::spawn_blocking(move || GlobalModel::load(&dir))
            .await
            .map_err(|e| Error::internal(format!("loading the published weights: {e}")))??
    };
    let mut published_round = published.round;
    let latest = store
        .latest()
        .await?
        .ok_or_else(|| Error::internal("no rounds"))?;
    let open = if latest.open {
        let next = first_round(latest.round + 1);
        let report = RoundReport {
            round: latest.round,
            rule: config.rule.clone(),
            notes: [(
                "round".to_string(),
                "the aggregator restarted during this round; its submissions were lost and the weights are those of the round before".to_string(),
            )]
            .into(),
            held_out: f64::NAN,
            held_out_start: f64::NAN,
            ..RoundReport::default()
        };
        store.abandon(latest.round, &dir, &report, &next).await?;
        tracing::warn!(
            round = latest.round,
            "resumed: the round open at the restart closed without change"
        );
        published_round = latest.round;
        next
    } else {
        first_round(latest.round + 1)
    };
    let (momentum, reference) = store.outer_state().await?;
    tracing::info!(
        published = published_round,
        open = open.round,
        "resumed from the database"
    );
    Ok(Start {
        model,
        open,
        published: published_round,
        momentum,
        reference,
    })
}

fn tokenizer(config: &AggregatorConfig) -> Result<Option<TextTokenizer>, Error> {
    let Some(path) = config
        .checkpoint
        .as_ref()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.exists())
    else {
        return Ok(None);
    };
    TextTokenizer::from_file(&path)
        .map(Some)
        .map_err(|e| Error::failed_precondition(format!("{}: {e}", path.display())))
}

/// Serves the aggregator on `listener` until `shutdown` resolves.
pub async fn run(
    config: AggregatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let _metrics = neuroshard_runtime::telemetry::metrics::serve(config.metrics_listen).await?;
    let health_listener = neuroshard_runtime::grpc::bind_health(config.health_listen).await?;
    neuroshard_runtime::telemetry::names::describe(
        neuroshard_runtime::telemetry::names::aggregator::TABLE,
    );
    if config.tls.insecure_plaintext {
        tracing::warn!(
            "gRPC is plaintext (tls.insecure_plaintext = true): anyone who reaches the port reads the global weights; submissions stay signed"
        );
    }
    let key = NodeKey::load_or_create(&config.key_file)?;
    let store = Store::connect(&config.database_url, &config.database_tls).await?;
    let mut assignments = follow_registry(&config);
    let mut shutdown = Box::pin(shutdown);
    let arch = tokio::select! {
        arch = architecture(&mut assignments) => arch?,
        () = &mut shutdown => return Ok(()),
    };
    let snapshot = assignments.borrow().clone();
    let start = start(&config, &store, &arch, snapshot, key.node_id()).await?;
    let held_out = match &config.data_dir {
        Some(dir) => Some(HeldOut::open(
            dir,
            config.held_out_seq_len,
            config.held_out_windows,
            arch.config.vocab_size,
        )?),
        None => {
            tracing::warn!(
                "data_dir is not set: submissions are screened but not scored on held-out data"
            );
            None
        }
    };
    let config = Arc::new(config);
    let tokenizer = tokenizer(&config)?;
    let aggregator = Aggregator::new(
        config.clone(),
        key,
        store,
        start,
        held_out,
        tokenizer,
        assignments,
        arch,
    )?;
    aggregator.announce().await;
    let ticker = {
        let aggregator = aggregator.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ROUND_TICK).await;
                if let Err(e) = aggregator.tick().await {
                    tracing::error!(error = %e, "closing the round failed; trying again");
                }
            }
        })
    };
    let listen = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("listener: {e}")))?;
    tracing::info!(%listen, aggregator_id = aggregator.aggregator_id(), network = %config.network_id, "diloco-aggregator serving");
    let result = neuroshard_runtime::grpc::serve(
        listener,
        config.tls.server()?,
        neuroshard_runtime::grpc::GrpcServices::default()
            .with(
                AggregatorServer::new(service::AggregatorService { aggregator })
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            )
            .with_health_listener(health_listener),
        shutdown,
    )
    .await;
    ticker.abort();
    tracing::info!("diloco-aggregator stopped");
    result
}
