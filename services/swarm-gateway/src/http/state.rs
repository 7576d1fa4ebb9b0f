//! [`AppState`]: what every handler and middleware shares. It depends on no handler, so the
//! handlers can depend on it and the router on them without a circle.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use neuroshard_common::Error;
use neuroshard_text::tokenizer::TextTokenizer;

use super::admission::AdmissionGate;
use super::api_keys::ApiKeys;
use super::telemetry;
use crate::billing::Ledger;
use crate::config::GatewayConfig;
use crate::generator::Generator;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    resources: Arc<AppResources>,
}

/// The pieces behind one [`AppState`], allocated once and shared by every clone.
struct AppResources {
    config: GatewayConfig,
    generator: Arc<dyn Generator>,
    tokenizer: Arc<TextTokenizer>,
    api_keys: ApiKeys,
    admission: AdmissionGate,
    metrics: PrometheusHandle,
    /// Charges inference when billing is on.
    ledger: Option<Arc<Ledger>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.resources.config)
            .field("model", &self.resources.generator.model())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Validates `config` and checks that `generator` serves the model `config` names.
    /// Installs the process-wide metrics recorder on first use.
    pub fn new(
        config: GatewayConfig,
        tokenizer: TextTokenizer,
        generator: Arc<dyn Generator>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let card = generator.model();
        if card.id != config.model {
            return Err(Error::invalid_argument(format!(
                "model: the configuration serves '{}' but the generator's model is '{}'",
                config.model, card.id
            )));
        }
        let ledger = Ledger::from_settings(&config.billing, &config.tls)?;
        Ok(Self {
            resources: Arc::new(AppResources {
                ledger,
                api_keys: ApiKeys::new(&config.api_keys),
                admission: AdmissionGate::new(&config.admission),
                metrics: telemetry::prometheus()?,
                config,
                generator,
                tokenizer: Arc::new(tokenizer),
            }),
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.resources.config
    }

    pub fn generator(&self) -> &Arc<dyn Generator> {
        &self.resources.generator
    }

    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.resources.tokenizer
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.resources.api_keys
    }

    pub fn admission(&self) -> &AdmissionGate {
        &self.resources.admission
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.resources.ledger.as_ref()
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.resources.metrics
    }
}
