//! The process: [`run`] connects the routed engine and serves the API with it; [`serve`] serves
//! the API with any [`Generator`] (tests use a scripted one).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::Error;
use neuroshard_common::identity::NodeKey;
use neuroshard_text::tokenizer::TextTokenizer;

use crate::config::{GatewayConfig, ObserverSettings};
use crate::engine::observer::ObserverConfig;
use crate::engine::{EngineConfig, SwarmEngine};
use crate::generator::Generator;
use crate::http::state::AppState;
use crate::routes::app;
use crate::status::TrainingStatus;

/// How often histogram samples are folded into the Prometheus distributions between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The gateway process: connects the routed engine to the registry (with the tokenizer's
/// end-of-sequence token), shows the served checkpoint's training report when there is one,
/// and serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let eos = TextTokenizer::from_file(&config.tokenizer)
        .map_err(|e| Error::invalid_argument(format!("tokenizer: {e}")))?
        .eos_id();
    if config.tls.insecure_plaintext {
        tracing::warn!(
            registry = %config.registry,
            "gRPC to the registry and workers is plaintext (tls.insecure_plaintext = true): prompts and hidden states cross the network unencrypted; set [tls] cert_file, key_file and ca_file and use https:// for mutual TLS"
        );
    }
    let mut engine_config = EngineConfig::from_gateway(&config, Some(eos));
    engine_config.observer = observer(&config.observer)?;
    let engine = SwarmEngine::connect(engine_config).await?;
    if let Some(path) = &config.training_report {
        // The loss curves of the run that made these weights; the API works without them.
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|json| TrainingStatus::from_report(&json).map_err(|e| e.message))
        {
            Ok(training) => engine.set_training(Some(training)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "training report not shown")
            }
        }
    }
    serve(config, listener, Arc::new(engine), shutdown).await
}

/// The observer this gateway reports as, when it has a key (loaded, or created on first start).
fn observer(settings: &ObserverSettings) -> Result<Option<ObserverConfig>, Error> {
    let Some(path) = &settings.key_file else {
        tracing::info!(
            "no observer key: this gateway reports no node measurements to the registry"
        );
        return Ok(None);
    };
    let key = NodeKey::load_or_create(path)?;
    tracing::info!(
        observer = %key.node_id(),
        "reporting node measurements to the registry as this observer (list it in the registry's `observers`)"
    );
    Ok(Some(ObserverConfig {
        key: Arc::new(key),
        network_id: settings.network_id.clone(),
        interval: Duration::from_millis(settings.interval_ms),
        min_samples: settings.min_samples,
    }))
}

/// Serves the HTTP API on `listener` with `generator` until `shutdown` resolves, then stops
/// accepting connections and lets requests in flight finish. Loads the tokenizer named by
/// `config.tokenizer`.
pub async fn serve(
    config: GatewayConfig,
    listener: tokio::net::TcpListener,
    generator: Arc<dyn Generator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let tokenizer = TextTokenizer::from_file(&config.tokenizer)
        .map_err(|e| Error::invalid_argument(format!("tokenizer: {e}")))?;
    let state = AppState::new(config, tokenizer, generator)?;
    let upkeep = {
        let handle = state.metrics().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(METRICS_UPKEEP).await;
                handle.run_upkeep();
            }
        })
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, model = %state.config().model, "gateway listening");
    }
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    served.map_err(|e| Error::internal(format!("serving HTTP: {e}")))
}
