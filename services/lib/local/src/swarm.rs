//! The local swarm: every NeuroShard service as its own process on loopback, for `neuroshard
//! up`, the end-to-end tests and the benchmarks. A throwaway PostgreSQL, the layer registry, N
//! shard workers (two replicas of each pipeline stage) loading a trained checkpoint, and the
//! gateway.
//!
//! Each process gets a generated TOML config in the state directory (0600; the gateway's holds
//! the API key) and a log file beside it. Every gRPC link is mutual TLS by default, with a
//! certificate per process under a CA made for the run ([`LocalPki`]); plaintext only when
//! asked for ([`SwarmOptions::plaintext`]). Once the swarm is ready, a [`Supervisor`] restarts
//! any process that fails (kill -9, a crash) with back-off, as an orchestrator would: a worker
//! comes back with the same key and port, so it re-registers as the same node and the registry
//! places it again. [`LocalSwarm::stop`] (SIGTERM, then SIGKILL after a grace period) and
//! dropping a [`LocalSwarm`] end supervision first and then every process; nothing outlives
//! it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use neuroshard_common::architecture::{
    TRAINING_BYTES_PER_PARAM, embedding_parameters, head_parameters, layer_parameters,
};
use neuroshard_common::checkpoint_files::{
    TOKENIZER_FILE, TRAINING_REPORT_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, read_model_config,
};
use neuroshard_common::identity::NodeKey;
use neuroshard_runtime::tls::TlsFiles;

use crate::backoff::RestartPolicy;
use crate::configs::{AggregatorToml, GatewayToml, LedgerToml, RegistryToml, WorkerToml};
use crate::pki::LocalPki;
use crate::service::{
    AGGREGATOR_BINARY, GATEWAY_BINARY, LEDGER_BINARY, Launcher, REGISTRY_BINARY, WORKER_BINARY,
    exited_during_start_up,
};
use crate::supervisor::{ProcessHandle, ProcessStatus, Supervisor, SupervisorEvent};
use crate::{LocalError, PgServer, Result, free_port, http_request};

const NETWORK: &str = "neuroshard-local";
/// node id → pid of each worker, in the state directory, for the gateway's status.
const PIDS_FILE: &str = "pids.json";
/// How long asking one worker which span it has loaded may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long stopping a process may take before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Shard workers; two replicas of `workers / 2` pipeline stages (one stage below 4).
    pub workers: usize,
    /// Trained checkpoint directory (config.json, model.safetensors, tokenizer.json).
    pub checkpoint: PathBuf,
    /// Gateway HTTP port (0 = any free port).
    pub http_port: u16,
    pub api_key: String,
    /// Where `layer-registry`, `shard-worker` and `swarm-gateway` are.
    pub bin_dir: PathBuf,
    /// Keys, generated configs and logs.
    pub state_dir: PathBuf,
    /// Liveness timings for the registry and workers (fast, for one machine).
    pub heartbeat_ms: u64,
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    /// The gateway's decode-hop deadline.
    pub hop_deadline_ms: u64,
    /// Threads each worker's libtorch may use.
    pub worker_threads: usize,
    /// Extra environment for every process (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`, `RUST_LOG`);
    /// they also inherit this process's environment.
    pub env: Vec<(String, String)>,
    /// TLS files for every gRPC link (registry, workers, the gateway's hops). Each process
    /// serves with `cert_file` + `key_file`, which must name `127.0.0.1`; with `ca_file`,
    /// servers require client certificates signed by it and every client presents the same
    /// pair (mutual TLS). `None`: a CA and a certificate per process are made for the run
    /// ([`LocalPki`]), unless `plaintext`.
    pub tls: Option<TlsFiles>,
    /// Plaintext gRPC (anyone who reaches a port can call it), when `tls` is `None`: for
    /// debugging with plaintext tools. Every service warns about it at start.
    pub plaintext: bool,
    /// How a failed process is restarted once the swarm is up; `None`: it stays down.
    pub restart: Option<RestartPolicy>,
    /// Train while serving: every worker gets this `[training]` section (the first stage of
    /// each pipeline drives it). `None`: the swarm only serves.
    pub training: Option<SwarmTraining>,
    /// Run the ledger and charge inference to the local user's wallet (`wallet.key` in the
    /// state directory, which the API key's account names). The ledger trusts the swarm's
    /// aggregator key and gateway key.
    pub ledger: bool,
    /// The registry attests (and the ledger pays) uptime per epoch of this length: a minute
    /// by default, so `up` shows uptime rewards soon.
    pub uptime_epoch_ms: u64,
}

/// The swarm's training pipelines: what their Drivers train on and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmTraining {
    /// Dataset directory from `neuroshard data build`.
    pub data_dir: PathBuf,
    pub inner_steps: u64,
    pub batch_size: u64,
    pub micro_batches: u64,
    pub seq_len: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub step_deadline_ms: u64,
    pub retry_ms: u64,
    /// The aggregator: how long a round waits for its pipelines, the accepted contributions
    /// a layer needs, the robust rule and its Byzantine bound, the outer step.
    pub round_deadline_ms: u64,
    pub quorum: u32,
    pub rule: String,
    pub byzantine: u32,
    pub outer_lr: f64,
    pub outer_momentum: f64,
}

impl SwarmTraining {
    /// Settings for one machine: short rounds, small batches, a deadline that tells a hung
    /// stage from a slow one on shared cores.
    pub fn local(data_dir: PathBuf, inner_steps: u64) -> Self {
        Self {
            data_dir,
            inner_steps,
            batch_size: 8,
            micro_batches: 4,
            seq_len: 64,
            lr: 1e-3,
            warmup_steps: 20,
            step_deadline_ms: 15_000,
            retry_ms: 1_000,
            round_deadline_ms: 300_000,
            quorum: 1,
            rule: "trimmed_mean".into(),
            byzantine: 1,
            outer_lr: 0.7,
            outer_momentum: 0.9,
        }
    }

    /// The worker's `[training]` table.
    pub fn table(&self) -> Result<toml::Table> {
        let int = |v: u64| toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        let data_dir = self
            .data_dir
            .to_str()
            .ok_or_else(|| LocalError(format!("{} is not valid UTF-8", self.data_dir.display())))?;
        let mut table = toml::Table::new();
        table.insert("enabled".into(), true.into());
        table.insert("data_dir".into(), data_dir.into());
        table.insert("inner_steps".into(), int(self.inner_steps));
        table.insert("batch_size".into(), int(self.batch_size));
        table.insert("micro_batches".into(), int(self.micro_batches));
        table.insert("seq_len".into(), int(self.seq_len));
        table.insert("lr".into(), self.lr.into());
        table.insert("warmup_steps".into(), int(self.warmup_steps));
        table.insert("step_deadline_ms".into(), int(self.step_deadline_ms));
        table.insert("retry_ms".into(), int(self.retry_ms));
        Ok(table)
    }
}

impl SwarmOptions {
    pub fn new(checkpoint: PathBuf, state_dir: PathBuf, bin_dir: PathBuf) -> Self {
        Self {
            workers: 4,
            checkpoint,
            http_port: 8080,
            api_key: String::new(),
            bin_dir,
            state_dir,
            heartbeat_ms: 500,
            suspect_after_ms: 2_000,
            dead_after_ms: 4_000,
            hop_deadline_ms: 200,
            worker_threads: 1,
            env: Vec::new(),
            tls: None,
            plaintext: false,
            restart: Some(RestartPolicy::default()),
            training: None,
            ledger: false,
            uptime_epoch_ms: 60_000,
        }
    }

    /// What can be checked before anything starts (PostgreSQL, training, any process), each
    /// failure naming the flag that changes it: the worker count, the API key's length (never
    /// the key itself), and whether the HTTP port is free.
    pub fn preflight(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(LocalError("--workers must be at least 1".into()));
        }
        let key_len = self.api_key.chars().count();
        if key_len < neuroshard_common::MIN_API_KEY_LEN {
            return Err(LocalError(format!(
                "--api-key is {key_len} characters long; the gateway needs at least {} (or leave --api-key out for a random one)",
                neuroshard_common::MIN_API_KEY_LEN
            )));
        }
        if self.http_port != 0
            && let Err(e) = std::net::TcpListener::bind(("127.0.0.1", self.http_port))
        {
            return Err(LocalError(format!(
                "port {} on 127.0.0.1 cannot be used for the gateway ({e}); choose another with --http-port",
                self.http_port
            )));
        }
        Ok(())
    }

    fn launcher(&self) -> Launcher {
        Launcher {
            bin_dir: self.bin_dir.clone(),
            state_dir: self.state_dir.clone(),
            env: self.env.clone(),
        }
    }
}

/// One shard worker process.
#[derive(Debug)]
pub struct LocalWorker {
    pub node_id: String,
    pub port: u16,
    /// Supervised: the same key, port and config each time it is started.
    pub process: ProcessHandle,
    name: String,
}

/// The running swarm. Supervision and every process end before PostgreSQL (field order).
#[derive(Debug)]
pub struct LocalSwarm {
    pub gateway_port: u16,
    pub registry_url: String,
    pub workers: Vec<LocalWorker>,
    pub gateway: ProcessHandle,
    pub registry: ProcessHandle,
    /// The diloco-aggregator, when the swarm trains.
    pub aggregator: Option<ProcessHandle>,
    pub aggregator_url: Option<String>,
    /// The ledger, the local user's wallet key and its address, with `SwarmOptions::ledger`.
    pub ledger: Option<ProcessHandle>,
    pub ledger_url: Option<String>,
    pub wallet_key: Option<PathBuf>,
    pub wallet_address: Option<String>,
    /// What a client of the swarm's gRPC links (this harness, a test) dials with: its own
    /// certificate under the run's CA, the given files, or none for plaintext.
    pub client_tls: TlsFiles,
    supervisor: Supervisor,
    pg: PgServer,
    /// What it was started with.
    options: SwarmOptions,
    /// How a worker is started, for [`LocalSwarm::add_worker`].
    worker_plan: WorkerPlan,
}

/// What every worker of the swarm is started with.
#[derive(Debug)]
struct WorkerPlan {
    launcher: Launcher,
    registry_url: String,
    aggregator_url: Option<String>,
    /// The ledger and the wallet training rewards go to.
    ledger: Option<(String, String)>,
    memory: u64,
    /// Workers the run's certificates were issued for (`None`: any number).
    capacity: Option<usize>,
    transport: Transport,
}

/// Workers that may join after the start (certificates issued ahead, since the run's CA key
/// is gone once the swarm runs).
pub const SPARE_WORKERS: usize = 4;

/// How the swarm's processes speak gRPC.
#[derive(Debug)]
enum Transport {
    /// The caller's files, shared by every process.
    Given(TlsFiles),
    /// A certificate per process under a CA made for this run.
    Issued(LocalPki),
    Plaintext,
}

/// The name the harness's own certificate is issued to.
const CLIENT: &str = "client";

impl Transport {
    fn new(options: &SwarmOptions, workers: &[String]) -> Result<Self> {
        if let Some(tls) = &options.tls {
            return Ok(Self::Given(tls.clone()));
        }
        if options.plaintext {
            return Ok(Self::Plaintext);
        }
        let mut names = vec![
            REGISTRY_BINARY,
            GATEWAY_BINARY,
            AGGREGATOR_BINARY,
            LEDGER_BINARY,
            CLIENT,
        ];
        names.extend(workers.iter().map(String::as_str));
        Ok(Self::Issued(LocalPki::issue(
            &options.state_dir.join("tls"),
            &names,
        )?))
    }

    fn files(&self, name: &str) -> TlsFiles {
        match self {
            Self::Given(tls) => tls.clone(),
            Self::Issued(pki) => pki.files(name),
            Self::Plaintext => TlsFiles::insecure_plaintext(),
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Self::Plaintext => "http",
            Self::Given(tls) if tls.insecure_plaintext => "http",
            _ => "https",
        }
    }
}

impl LocalSwarm {
    /// Starts everything and waits until the gateway is ready with every worker placed and
    /// every layer replicated (or `timeout` passes), then supervises the processes. A process
    /// that exits before that ends the start with the cause from its log. `progress` hears
    /// each milestone.
    pub fn start(
        options: &SwarmOptions,
        timeout: Duration,
        progress: impl Fn(&str),
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let model = read_model_config(&options.checkpoint)
            .map_err(|e| LocalError(format!("checkpoint {}: {e}", options.checkpoint.display())))?;
        let tokenizer = options.checkpoint.join(TOKENIZER_FILE);
        if !tokenizer.exists() {
            return Err(LocalError(format!(
                "{} is missing: the checkpoint has no tokenizer",
                tokenizer.display()
            )));
        }
        options.preflight()?;
        let launcher = options.launcher();
        let logs = options.state_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| LocalError(format!("creating {}: {e}", logs.display())))?;

        let pg = PgServer::start()?;
        progress(&format!("PostgreSQL ready on port {}", pg.port));
        let supervisor = Supervisor::new(
            options.restart,
            Some(logs.join("supervisor.log")),
            Some(options.state_dir.join("processes.json")),
        );
        let worker_names: Vec<String> = (0..options.workers + SPARE_WORKERS)
            .map(worker_name)
            .collect();
        let transport = Transport::new(options, &worker_names)?;
        // The gateway reports what it measures of the workers; the registry takes reports
        // only from the observers it lists, so the gateway's key exists before either starts.
        let gateway_key = options.state_dir.join("gateway.key");
        let observer = NodeKey::load_or_create(&gateway_key)
            .map_err(|e| LocalError(format!("{}: {e}", gateway_key.display())))?
            .node_id()
            .to_string();
        let registry_port = free_port()?;
        let registry_key = options.state_dir.join("registry.key");
        let registry_config = RegistryToml::new(NETWORK)
            .observers(&[observer.as_str()])
            .attesting(&registry_key, options.uptime_epoch_ms)?
            .liveness(
                options.heartbeat_ms,
                options.suspect_after_ms,
                options.dead_after_ms,
            )
            .watch_poll_ms(100)
            .model(&model)?
            .tls(&transport.files(REGISTRY_BINARY))?
            .listen(registry_port)
            .database_url(&pg.url());
        let scheme = if registry_config.serves_tls() {
            "https"
        } else {
            "http"
        };
        let registry_url = format!("{scheme}://127.0.0.1:{registry_port}");
        let registry = supervisor.add(
            REGISTRY_BINARY,
            spawner(
                &launcher,
                REGISTRY_BINARY,
                REGISTRY_BINARY,
                registry_config.table().clone(),
                Vec::new(),
            ),
        )?;
        wait_listening(
            &launcher,
            &registry,
            REGISTRY_BINARY,
            registry_port,
            deadline,
        )?;
        progress(&format!("layer-registry ready at {registry_url}"));

        let (aggregator, aggregator_url) = match &options.training {
            Some(training) => {
                let port = free_port()?;
                let mut config = AggregatorToml::new(
                    NETWORK,
                    port,
                    &registry_url,
                    &pg.create_database("aggregator")?,
                    &options.state_dir.join("aggregator.key"),
                    &options.state_dir.join("aggregator"),
                )?
                .tls(&transport.files(AGGREGATOR_BINARY))?
                .held_out(&training.data_dir, training.seq_len, 16)?
                .rounds(
                    training.inner_steps,
                    training.round_deadline_ms,
                    training.quorum,
                )
                .rule(&training.rule, training.byzantine)
                .outer(training.outer_lr, training.outer_momentum);
                if has_weights(&options.checkpoint) {
                    config = config.checkpoint(&options.checkpoint)?;
                }
                let scheme = if config.serves_tls() { "https" } else { "http" };
                let url = format!("{scheme}://127.0.0.1:{port}");
                let process = supervisor.add(
                    AGGREGATOR_BINARY,
                    spawner(
                        &launcher,
                        AGGREGATOR_BINARY,
                        AGGREGATOR_BINARY,
                        config.table().clone(),
                        Vec::new(),
                    ),
                )?;
                wait_listening(&launcher, &process, AGGREGATOR_BINARY, port, deadline)?;
                progress(&format!("diloco-aggregator ready at {url}"));
                (Some(process), Some(url))
            }
            None => (None, None),
        };

        let (ledger, ledger_url, wallet_key, wallet_address) = if options.ledger {
            let port = free_port()?;
            let key_id = |path: &Path| {
                NodeKey::load_or_create(path)
                    .map(|k| k.node_id().to_string())
                    .map_err(|e| LocalError(format!("{}: {e}", path.display())))
            };
            // The aggregator's key exists before it starts, so the ledger can trust it.
            let aggregator_id = key_id(&options.state_dir.join("aggregator.key"))?;
            // The registry created its key when it started.
            let registry_id = key_id(&registry_key)?;
            let gateway_id = key_id(&gateway_key)?;
            let wallet = options.state_dir.join("wallet.key");
            let address = key_id(&wallet)?;
            let mut config = LedgerToml::new(NETWORK, port, &pg.create_database("ledger")?)
                .tls(&transport.files(LEDGER_BINARY))?
                .aggregators(&[&aggregator_id])
                .gateways(&[&gateway_id])
                .registries(&[&registry_id], options.uptime_epoch_ms);
            if let Some(training) = &options.training {
                config = config
                    .tokens_per_batch(training.batch_size * training.seq_len)
                    .tokens_per_sample(training.seq_len);
            }
            let scheme = if config.serves_tls() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{port}");
            let process = supervisor.add(
                LEDGER_BINARY,
                spawner(
                    &launcher,
                    LEDGER_BINARY,
                    LEDGER_BINARY,
                    config.table().clone(),
                    Vec::new(),
                ),
            )?;
            wait_listening(&launcher, &process, LEDGER_BINARY, port, deadline)?;
            progress(&format!("ledger ready at {url}"));
            (Some(process), Some(url), Some(wallet), Some(address))
        } else {
            (None, None, None, None)
        };

        let stages = if options.workers >= 4 {
            options.workers / 2
        } else {
            1
        };
        let layers_per_stage = model.num_layers.div_euclid(stages as i64)
            + i64::from(model.num_layers % stages as i64 != 0);
        let layer = layer_parameters(&model);
        let ends = embedding_parameters(&model).max(head_parameters(&model));
        // Room for one stage plus half a layer: enough for its span, never for a bigger one.
        let memory = u64::try_from(layers_per_stage * layer + ends + layer / 2)
            .unwrap_or(0)
            .saturating_mul(TRAINING_BYTES_PER_PARAM);
        let worker_plan = WorkerPlan {
            launcher: launcher.clone(),
            registry_url: registry_url.clone(),
            aggregator_url: aggregator_url.clone(),
            ledger: ledger_url.clone().zip(wallet_address.clone()),
            memory,
            capacity: matches!(transport, Transport::Issued(_)).then_some(worker_names.len()),
            transport,
        };
        let transport = &worker_plan.transport;
        let mut workers = Vec::with_capacity(options.workers);
        for i in 0..options.workers {
            workers.push(spawn_worker(&worker_plan, options, &supervisor, i)?);
        }
        for w in &workers {
            wait_listening(&launcher, &w.process, &w.name, w.port, deadline)?;
        }
        progress(&format!(
            "{} shard-workers up ({} stages × {} replicas)",
            workers.len(),
            stages,
            if options.workers >= 4 {
                2
            } else {
                options.workers
            }
        ));

        let gateway_port = if options.http_port == 0 {
            free_port()?
        } else {
            options.http_port
        };
        let pids_file = options.state_dir.join(PIDS_FILE);
        let node_names: Vec<(String, String)> = workers
            .iter()
            .map(|w| (w.name.clone(), w.node_id.clone()))
            .collect();
        write_pids(&pids_file, &node_names, &supervisor.statuses())?;
        // A restarted worker has a new pid: the gateway's status shows the one that runs.
        let hook_file = pids_file.clone();
        supervisor.on_spawn(move |statuses| {
            let _ = write_pids(&hook_file, &node_names, statuses);
        });
        // With the ledger, requests are charged to the local user's wallet.
        let account = wallet_address
            .clone()
            .unwrap_or_else(|| "local".to_string());
        let mut gateway_config =
            GatewayToml::new(gateway_port, "neurollm", &tokenizer, &registry_url)?
                .api_key(&options.api_key, &account)
                .per_hop_deadline_ms(options.hop_deadline_ms)
                .backoff_ms(1_000)
                .observer(&gateway_key, NETWORK)?
                .tls(&transport.files(GATEWAY_BINARY))?
                .node_pids_file(&pids_file)?;
        if let Some(url) = &aggregator_url {
            gateway_config = gateway_config.aggregator(url);
        }
        if let Some(url) = &ledger_url {
            gateway_config = gateway_config.billing(url, &gateway_key, NETWORK)?;
        }
        let report = options.checkpoint.join(TRAINING_REPORT_FILE);
        if report.exists() {
            gateway_config = gateway_config.training_report(&report)?;
        }
        let gateway = supervisor.add(
            GATEWAY_BINARY,
            spawner(
                &launcher,
                GATEWAY_BINARY,
                GATEWAY_BINARY,
                gateway_config.table().clone(),
                Vec::new(),
            ),
        )?;
        let client_tls = transport.files(CLIENT);
        let mut swarm = Self {
            gateway_port,
            client_tls,
            registry_url,
            workers,
            gateway,
            registry,
            aggregator,
            aggregator_url,
            ledger,
            ledger_url,
            wallet_key,
            wallet_address,
            supervisor,
            pg,
            options: options.clone(),
            worker_plan,
        };
        swarm.wait_ready(deadline, true)?;
        progress(&format!("swarm-gateway ready on port {gateway_port}"));
        swarm.supervisor.supervise()?;
        Ok(swarm)
    }

    /// Waits (up to `timeout`) until the swarm is whole again: see [`LocalSwarm::start`].
    /// Processes may be restarting meanwhile.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_ready(Instant::now() + timeout, false)
    }

    /// Starts one more worker (a node joining the running swarm) with a new key, and returns
    /// its node id without waiting for it to be placed. It is supervised like the others.
    pub fn add_worker(&mut self) -> Result<String> {
        let index = self.workers.len();
        if self.worker_plan.capacity.is_some_and(|n| index >= n) {
            return Err(LocalError(format!(
                "this run's certificates cover {} workers ({SPARE_WORKERS} beyond those started)",
                self.worker_plan.capacity.unwrap_or(0)
            )));
        }
        let worker = spawn_worker(&self.worker_plan, &self.options, &self.supervisor, index)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_listening(
            &self.worker_plan.launcher,
            &worker.process,
            &worker.name,
            worker.port,
            deadline,
        )?;
        let node_id = worker.node_id.clone();
        self.workers.push(worker);
        Ok(node_id)
    }

    /// Starts the worker holding `node_id` again now (killing it first if it still runs),
    /// with the same key, port and config: the node a crash took away comes back as itself.
    /// Its log is kept and added to. Returns without waiting for it to be placed.
    pub fn restart_worker(&mut self, node_id: &str) -> Result<()> {
        self.workers
            .iter()
            .find(|w| w.node_id == node_id)
            .ok_or_else(|| LocalError(format!("no local worker {node_id}")))?
            .process
            .restart()
    }

    /// Every process: pid, whether it runs, restarts, how the last one exited.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        self.supervisor.statuses()
    }

    /// Calls `listener` with each exit and restart from now on (on the supervisor's thread).
    pub fn on_event(&self, listener: impl Fn(&SupervisorEvent) + Send + 'static) {
        self.supervisor.on_event(listener);
    }

    /// The PostgreSQL port the registry uses.
    pub fn database_port(&self) -> u16 {
        self.pg.port
    }

    /// Waits until `/readyz` answers 200 and the status shows every worker live with a span
    /// and every layer held by at least `min(2, workers)` nodes. During start-up
    /// (`start_up`), a process that exits ends the wait with its cause.
    fn wait_ready(&mut self, deadline: Instant, start_up: bool) -> Result<()> {
        let want = self.workers.len().min(2);
        let launcher = self.options.launcher();
        let auth = format!("Bearer {}", self.options.api_key);
        let mut last = String::new();
        while Instant::now() < deadline {
            if start_up {
                let processes = std::iter::once((REGISTRY_BINARY, &self.registry))
                    .chain(self.aggregator.iter().map(|a| (AGGREGATOR_BINARY, a)))
                    .chain(self.workers.iter().map(|w| (w.name.as_str(), &w.process)))
                    .chain(std::iter::once((GATEWAY_BINARY, &self.gateway)));
                for (name, process) in processes {
                    if let Some(exit) = process.exit() {
                        return Err(exited_during_start_up(&launcher, name, &exit));
                    }
                }
            }
            let step = Duration::from_secs(2);
            let get = |path: &str| {
                http_request(
                    self.gateway_port,
                    "GET",
                    path,
                    &[("Authorization", &auth)],
                    "",
                    step,
                )
            };
            if let Ok(ready) = get("/readyz")
                && ready.status == 200
                && let Ok(status) = get("/api/v1/status")
            {
                let doc: serde_json::Value = serde_json::from_str(&status.body)
                    .map_err(|e| LocalError(format!("/api/v1/status: {e}")))?;
                let live = doc["nodes"]
                    .as_array()
                    .map(|n| {
                        n.iter()
                            .filter(|n| {
                                n["state"] == "live"
                                    && n["span"][1].as_u64() > n["span"][0].as_u64()
                            })
                            .count()
                    })
                    .unwrap_or(0);
                let replicated = doc["layers"].as_array().is_some_and(|layers| {
                    !layers.is_empty()
                        && layers
                            .iter()
                            .all(|l| l["holders"].as_array().map(Vec::len).unwrap_or(0) >= want)
                });
                if live == self.workers.len() && replicated {
                    let loaded = spans_loaded(&doc, &self.client_tls);
                    if loaded == self.workers.len() {
                        return Ok(());
                    }
                    last = format!(
                        "{loaded}/{} workers have loaded their layers",
                        self.workers.len()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                last = format!(
                    "{live}/{} workers placed, replicated: {replicated}",
                    self.workers.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(LocalError(format!(
            "the swarm was not ready in time ({last})"
        )))
    }

    /// Ends supervision, then stops every process (gateway, workers, registry) with SIGTERM
    /// and a grace period each.
    pub fn stop(mut self) {
        self.supervisor.shutdown(Some(GRACE));
    }

    /// The worker holding `node_id`, if it is one of ours.
    pub fn worker_mut(&mut self, node_id: &str) -> Option<&mut LocalWorker> {
        self.workers.iter_mut().find(|w| w.node_id == node_id)
    }
}

/// Starts `binary` as `name` with `config`: afresh the first time, keeping its log after.
fn spawner(
    launcher: &Launcher,
    binary: &str,
    name: &str,
    config: toml::Table,
    env: Vec<(String, String)>,
) -> crate::supervisor::Spawn {
    let launcher = launcher.clone();
    let (binary, name) = (binary.to_string(), name.to_string());
    let mut first = true;
    Box::new(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let child = if first {
            launcher.spawn(&binary, &name, &config, &env)
        } else {
            launcher.respawn(&binary, &name, &config, &env)
        };
        first = false;
        child
    })
}

/// Waits until `process` listens on loopback `port`; fails at once, with the cause, if it
/// exits first.
fn wait_listening(
    launcher: &Launcher,
    process: &ProcessHandle,
    name: &str,
    port: u16,
    deadline: Instant,
) -> Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if let Some(exit) = process.exit() {
            return Err(exited_during_start_up(launcher, name, &exit));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(LocalError(format!(
        "{name} did not start listening on port {port} in time (see {})",
        launcher.log_path(name).display()
    )))
}

/// How many nodes of a gateway status document report (over gRPC `Info`, dialled with `tls`)
/// that they hold the span the registry assigned them: placement is published before workers
/// finish loading weights.
pub fn spans_loaded(doc: &serde_json::Value, tls: &TlsFiles) -> usize {
    let nodes = doc["nodes"].as_array().cloned().unwrap_or_default();
    // A runtime on a thread of its own, so callers inside an async runtime (tests) can use
    // this too.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(count_loaded(nodes, tls)))
                    .unwrap_or(0)
            })
            .join()
            .unwrap_or(0)
    })
}

async fn count_loaded(nodes: Vec<serde_json::Value>, tls: &TlsFiles) -> usize {
    use neuroshard_proto::worker::v1::InfoRequest;
    use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
    let mut loaded = 0;
    for node in nodes {
        let (Some(endpoint), Some(start), Some(end)) = (
            node["endpoint"].as_str(),
            node["span"][0].as_u64(),
            node["span"][1].as_u64(),
        ) else {
            continue;
        };
        // Bounded: a worker registers before it serves, and a TLS handshake with it waits
        // until it does.
        let probe = async {
            let channel = tls.connect(endpoint).await.ok()?;
            let mut client = ShardWorkerClient::new(channel);
            client.info(InfoRequest {}).await.ok()
        };
        if let Ok(Some(info)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await
            && let Some(span) = info.into_inner().span
            && u64::from(span.start) == start
            && u64::from(span.end) == end
        {
            loaded += 1;
        }
    }
    loaded
}

/// Writes the node id → pid file the gateway's status reads, replacing it whole so the
/// gateway never reads half of it.
fn write_pids(path: &Path, workers: &[(String, String)], statuses: &[ProcessStatus]) -> Result<()> {
    let pids: BTreeMap<&str, u32> = workers
        .iter()
        .filter_map(|(name, node_id)| {
            let status = statuses.iter().find(|s| &s.name == name)?;
            Some((node_id.as_str(), status.pid))
        })
        .collect();
    let text = serde_json::to_vec(&pids).map_err(|e| LocalError(e.to_string()))?;
    neuroshard_common::fs::write_atomic(path, &text)
        .map_err(|e| LocalError(format!("writing {}: {e}", path.display())))
}

fn worker_name(index: usize) -> String {
    format!("worker-{index}")
}

/// Whether `dir` holds a model's weights (not only its config and tokenizer).
pub fn has_weights(dir: &Path) -> bool {
    dir.join(WEIGHTS_FILE).exists() || dir.join(WEIGHTS_INDEX_FILE).exists()
}

/// Starts worker `index` under `supervisor`, with its key (created the first time) and a free
/// port; returns once it is spawned (not yet listening).
fn spawn_worker(
    plan: &WorkerPlan,
    options: &SwarmOptions,
    supervisor: &Supervisor,
    index: usize,
) -> Result<LocalWorker> {
    let name = worker_name(index);
    let key_file = options.state_dir.join(format!("{name}.key"));
    let node_id = NodeKey::load_or_create(&key_file)
        .map_err(|e| LocalError(format!("{}: {e}", key_file.display())))?
        .node_id()
        .to_string();
    let port = free_port()?;
    let scheme = plan.transport.scheme();
    let mut config = WorkerToml::new(port, &plan.registry_url, NETWORK, &key_file)?
        .advertise(&format!("{scheme}://127.0.0.1:{port}"))
        .tls(&plan.transport.files(&name))?
        .usable_memory_bytes(plan.memory)
        .heartbeat_ms(options.heartbeat_ms)
        // The local swarm stops as a whole: there is nobody to hand layers to.
        .drain_timeout_ms(0);
    // A checkpoint without weights (config and tokenizer only) starts from the seed every
    // worker agrees on.
    if has_weights(&options.checkpoint) {
        config = config.checkpoint(&options.checkpoint)?;
    }
    if let Some(training) = &options.training {
        config = config.training(training.table()?);
    }
    if let Some(url) = &plan.aggregator_url {
        config = config.aggregators(&[url.as_str()]);
    }
    // Work earns for the local user: rewards (training, uptime) go to the wallet inference
    // charges.
    if let Some((ledger, payout)) = &plan.ledger {
        config = config.ledger(ledger, payout);
    }
    // libtorch limited to the configured threads: the workers share one machine.
    let env = vec![(
        "OMP_NUM_THREADS".to_string(),
        options.worker_threads.to_string(),
    )];
    let process = supervisor.add(
        &name,
        spawner(
            &plan.launcher,
            WORKER_BINARY,
            &name,
            config.table().clone(),
            env,
        ),
    )?;
    Ok(LocalWorker {
        node_id,
        port,
        process,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SwarmOptions {
        let mut options = SwarmOptions::new("ckpt".into(), "state".into(), "bin".into());
        options.api_key = "sk-a-long-enough-secret".into();
        options.http_port = 0;
        options
    }

    #[test]
    fn preflight_names_the_flag_and_never_the_key() {
        assert!(options().preflight().is_ok());

        let mut short = options();
        short.api_key = "short-secret".into();
        let err = short.preflight().unwrap_err().0;
        assert!(err.contains("--api-key is 12 characters"), "{err}");
        assert!(err.contains("at least 16"), "{err}");
        assert!(
            !err.contains("short-secret"),
            "the key reached the message: {err}"
        );

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut busy = options();
        busy.http_port = taken.local_addr().unwrap().port();
        let err = busy.preflight().unwrap_err().0;
        assert!(err.contains(&format!("port {}", busy.http_port)), "{err}");
        assert!(err.contains("--http-port"), "{err}");

        let mut none = options();
        none.workers = 0;
        assert!(none.preflight().unwrap_err().0.contains("--workers"));
    }
}
