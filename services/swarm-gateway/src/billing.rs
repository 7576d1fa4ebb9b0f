//! Charging for inference through the ledger. Before any compute a request escrows its most
//! possible cost from the wallet its API key names (a short balance is OpenAI's 429
//! `insufficient_quota`); when it ends — finished, failed, or its client gone — a [`Bill`]
//! settles the tokens delivered at the locked price, paying the route that served it. (The
//! HTTP layer turns a refused escrow into its 429; this module knows no HTTP.) A
//! settlement is retried until the ledger acknowledges it (it is idempotent by request id),
//! so a ledger restart loses no charge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::now_ms;
use neuroshard_common::{Error, ErrorKind};
use neuroshard_neuro::sign_operation;
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use neuroshard_proto::ledger::v1::{Escrow, GetAccountRequest, Settle, SupplyRequest, operation};
use tonic::transport::Channel;

use crate::config::BillingSettings;
use crate::generator::{Generator, ServedRoute};
use crate::status::{BillingStatus, ChargeStatus, SupplyStatus, WalletStatus};

/// Charges kept for the status document.
const RECENT: usize = 32;
/// How long a read of the ledger's supply and balances serves the status document.
const LEDGER_VIEW_TTL: Duration = Duration::from_secs(2);
/// How long the status document waits for the ledger's supply and balances.
const LEDGER_READ: Duration = Duration::from_millis(500);
/// Between attempts at a settlement the ledger did not acknowledge.
const SETTLE_RETRY: Duration = Duration::from_millis(500);

/// The ledger as this gateway uses it.
pub struct Ledger {
    client: LedgerClient<Channel>,
    key: NodeKey,
    network_id: String,
    url: String,
    status: Mutex<BillingStatus>,
    /// The ledger's supply and the keys' balances as last read, and how many escrows and
    /// settlements this gateway had made then.
    view: Mutex<Option<LedgerView>>,
    generation: AtomicU64,
}

#[derive(Debug, Clone)]
struct LedgerView {
    read: std::time::Instant,
    generation: u64,
    supply: Option<SupplyStatus>,
    wallets: Vec<WalletStatus>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("url", &self.url)
            .field("gateway_id", &self.key.node_id())
            .finish_non_exhaustive()
    }
}

/// What an escrow locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrowed {
    pub price_per_token: i64,
    pub escrowed: i64,
    pub max_tokens: u64,
}

impl Ledger {
    /// The ledger of `settings` (connected lazily, so the gateway starts without it), with
    /// the gateway's key; `None` when billing is off.
    pub fn from_settings(
        settings: &BillingSettings,
        tls: &neuroshard_runtime::tls::TlsFiles,
    ) -> Result<Option<Arc<Self>>, Error> {
        let (Some(url), Some(key_file)) = (&settings.ledger, &settings.key_file) else {
            return Ok(None);
        };
        let key = NodeKey::load_or_create(key_file)?;
        let channel = tls.endpoint(url)?.connect_lazy();
        tracing::info!(ledger = %url, gateway_id = %key.node_id(), "charging inference through the ledger (list this gateway id in the ledger's `gateways`)");
        Ok(Some(Arc::new(Self {
            client: LedgerClient::new(channel),
            status: Mutex::new(BillingStatus {
                ledger: url.clone(),
                gateway_id: key.node_id().to_string(),
                ..BillingStatus::default()
            }),
            key,
            network_id: settings.network_id.clone(),
            url: url.clone(),
            view: Mutex::new(None),
            generation: AtomicU64::new(0),
        })))
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, BillingStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn status(&self) -> BillingStatus {
        self.status_mut().clone()
    }

    /// [`Ledger::status`] with the ledger's supply and the balances of `wallets`, as far as
    /// the ledger answers within a moment (the status document must not wait on it). Read
    /// at most every `LEDGER_VIEW_TTL` while no charge moved money (dashboards poll every
    /// second; the ledger should not answer each of them).
    pub async fn status_with_balances(&self, wallets: &[String]) -> BillingStatus {
        let mut status = self.status();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(view) = self
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|v| v.generation == generation && v.read.elapsed() < LEDGER_VIEW_TTL)
        {
            status.supply = view.supply;
            status.wallets = view.wallets.clone();
            return status;
        }
        let mut client = self.client.clone();
        let mut view = LedgerView {
            read: std::time::Instant::now(),
            generation,
            supply: None,
            wallets: Vec::new(),
        };
        let read = async {
            let supply = client
                .supply(SupplyRequest { audit: false })
                .await?
                .into_inner();
            view.supply = Some(SupplyStatus {
                minted: supply.minted,
                burned: supply.burned,
                supply: supply.supply,
            });
            for address in wallets {
                let account = client
                    .get_account(GetAccountRequest {
                        address: address.clone(),
                    })
                    .await?
                    .into_inner();
                view.wallets.push(WalletStatus {
                    address: account.address,
                    balance: account.balance,
                    staked: account.staked,
                });
            }
            Ok::<(), tonic::Status>(())
        };
        match tokio::time::timeout(LEDGER_READ, read).await {
            Ok(Ok(())) => {
                status.supply = view.supply;
                status.wallets = view.wallets.clone();
                *self.view.lock().unwrap_or_else(PoisonError::into_inner) = Some(view);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e.message(), "reading the ledger for the status")
            }
            Err(_) => tracing::debug!("the ledger did not answer the status read in time"),
        }
        status
    }

    /// Money moved through this gateway: the cached ledger view is out of date.
    fn moved(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Escrows `max_tokens` at the current price from `payer` for `request_id`.
    pub async fn escrow(
        &self,
        request_id: &str,
        payer: &str,
        max_tokens: u64,
        utilisation_ppm: u64,
    ) -> Result<Escrowed, Error> {
        let envelope = sign_operation(
            &self.key,
            &self.network_id,
            0,
            now_ms(),
            operation::Kind::Escrow(Escrow {
                request_id: request_id.to_string(),
                payer: payer.to_string(),
                max_tokens,
                utilisation_ppm,
            }),
        )?;
        match self.client.clone().submit(envelope).await {
            Ok(outcome) => {
                let outcome = outcome.into_inner();
                self.moved();
                self.status_mut().price_per_token = outcome.price_per_token;
                Ok(Escrowed {
                    price_per_token: outcome.price_per_token,
                    escrowed: outcome.escrowed,
                    max_tokens,
                })
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                self.status_mut().refused_unfunded += 1;
                Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("You exceeded your current quota: {}", status.message()),
                ))
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), code = ?status.code(), "escrow failed");
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the ledger could not escrow this request's cost; try again",
                ))
            }
        }
    }

    /// Settles `request_id` for `tokens` over `route` in the background, until acknowledged.
    fn settle(self: &Arc<Self>, charge: ChargeStatus) {
        let ledger = self.clone();
        self.status_mut().settling += 1;
        tokio::spawn(async move {
            let settle = Settle {
                request_id: charge.request_id.clone(),
                tokens: charge.tokens,
                driver: charge.driver.clone(),
                processors: charge.processors.clone(),
                validator: charge.validator.clone(),
            };
            loop {
                let envelope = match sign_operation(
                    &ledger.key,
                    &ledger.network_id,
                    0,
                    now_ms(),
                    operation::Kind::Settle(settle.clone()),
                ) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "signing a settlement");
                        return;
                    }
                };
                match ledger.client.clone().submit(envelope).await {
                    Ok(outcome) => {
                        ledger.moved();
                        let mut status = ledger.status_mut();
                        status.settling = status.settling.saturating_sub(1);
                        status.requests_settled += 1;
                        status.tokens_charged += charge.tokens;
                        status.charged += charge.charged;
                        status.recent.insert(
                            0,
                            ChargeStatus {
                                transaction: outcome.into_inner().transaction,
                                ..charge
                            },
                        );
                        status.recent.truncate(RECENT);
                        return;
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        tracing::debug!(request_id = %charge.request_id, error = %s.message(), "settlement not acknowledged yet; retrying");
                        tokio::time::sleep(SETTLE_RETRY).await;
                    }
                    Err(s) => {
                        let mut status = ledger.status_mut();
                        status.settling = status.settling.saturating_sub(1);
                        tracing::error!(request_id = %charge.request_id, error = %s.message(), "the ledger refused a settlement");
                        return;
                    }
                }
            }
        });
    }
}

/// What a bill is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRequest {
    pub request_id: String,
    /// The wallet charged: the API key's account.
    pub payer: String,
    /// The generations of its choices (`<id>` or `<id>-<index>`).
    pub choices: Vec<String>,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    /// Demand over capacity at the gateway now (the price rises with it).
    pub utilisation_ppm: u64,
}

/// A request's charge while it runs; settles when dropped (the request ended, however).
pub struct Bill {
    ledger: Arc<Ledger>,
    generator: Arc<dyn Generator>,
    request_id: String,
    payer: String,
    /// The generations of its choices (`<id>` or `<id>-<index>`).
    choices: Vec<String>,
    escrowed: Escrowed,
    prompt_tokens: u64,
    /// Completion tokens delivered to the client, per choice.
    delivered: Vec<u32>,
}

impl std::fmt::Debug for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bill")
            .field("request_id", &self.request_id)
            .field("escrowed", &self.escrowed)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

/// What a request costs so far: the tokens charged and their price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Nano-NEURO per token, locked when the request started.
    pub price_per_token: i64,
    /// Prompt tokens (each choice's) plus completion tokens delivered.
    pub tokens: u64,
    /// price_per_token × tokens, nano-NEURO.
    pub charged: i64,
}

impl Bill {
    /// Escrows the most `request` may cost (each choice's prompt and `max_tokens`).
    pub async fn open(
        ledger: &Arc<Ledger>,
        generator: Arc<dyn Generator>,
        request: BillRequest,
    ) -> Result<Self, Error> {
        let n = request.choices.len() as u64;
        let prompt_tokens = n * u64::from(request.prompt_tokens);
        let most = prompt_tokens + n * u64::from(request.max_tokens);
        let escrowed = ledger
            .escrow(
                &request.request_id,
                &request.payer,
                most,
                request.utilisation_ppm,
            )
            .await?;
        Ok(Self {
            ledger: ledger.clone(),
            generator,
            delivered: vec![0; request.choices.len()],
            request_id: request.request_id,
            payer: request.payer,
            choices: request.choices,
            escrowed,
            prompt_tokens,
        })
    }

    /// Choice `index` has delivered `tokens` completion tokens in all.
    pub fn delivered(&mut self, index: u32, tokens: u32) {
        if let Some(d) = self.delivered.get_mut(index as usize) {
            *d = (*d).max(tokens);
        }
    }

    /// The charge so far: prompts and the completion tokens delivered.
    pub fn cost(&self) -> Cost {
        self.cost_for(self.delivered.iter().map(|d| u64::from(*d)).sum())
    }

    /// The charge once `completion` tokens in all are delivered.
    pub fn cost_for(&self, completion: u64) -> Cost {
        let tokens = (self.prompt_tokens + completion).min(self.escrowed.max_tokens);
        Cost {
            price_per_token: self.escrowed.price_per_token,
            tokens,
            charged: self
                .escrowed
                .price_per_token
                .saturating_mul(i64::try_from(tokens).unwrap_or(i64::MAX)),
        }
    }

    pub fn escrowed(&self) -> Escrowed {
        self.escrowed
    }
}

impl Drop for Bill {
    fn drop(&mut self) {
        let cost = self.cost();
        // The route's ends from the first choice; every node that served any choice shares
        // the processors' part.
        let mut route: Option<ServedRoute> = None;
        for choice in &self.choices {
            if let Some(served) = self.generator.served(choice) {
                match &mut route {
                    None => route = Some(served),
                    Some(r) => {
                        for p in served.processors {
                            if !r.processors.contains(&p) {
                                r.processors.push(p);
                            }
                        }
                    }
                }
            }
        }
        // No route (nothing ran): nothing is charged; the gateway's id stands in for the
        // route so the escrow is refunded whole.
        let (route, tokens) = match route {
            Some(r) => (r, cost.tokens),
            None => {
                let me = self.ledger.key.node_id().to_string();
                (
                    ServedRoute {
                        driver: me.clone(),
                        processors: Vec::new(),
                        validator: me,
                    },
                    0,
                )
            }
        };
        let charged = if tokens == 0 { 0 } else { cost.charged };
        self.ledger.settle(ChargeStatus {
            request_id: self.request_id.clone(),
            payer: Some(self.payer.clone()),
            price_per_token: cost.price_per_token,
            tokens,
            charged,
            escrowed: self.escrowed.escrowed,
            driver: route.driver,
            processors: route.processors,
            validator: route.validator,
            transaction: 0,
        });
    }
}
