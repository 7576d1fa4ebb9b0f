//! A registry and shard-worker processes assembled by hand, for the tests that add workers one
//! by one (growth), give them unusual limits (streaming) or drive single hops (pipeline), and
//! the checks they make on them: replicas, loaded spans, pipelined forwards.

use std::time::{Duration, Instant};

use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_local::{
    AggregatorToml, ChildGuard, Launcher, LocalRegistry, RegistryToml, WorkerToml, free_port,
};
use neuroshard_model::tch::Tensor;
use neuroshard_model::{Shard, ShardInput};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, GetAssignmentRequest, NodeState, Route, RoutesRequest,
};
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_proto::worker::v1::{ForwardRequest, InfoRequest};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_worker_client::{ClientOptions, WorkerClient};
use tonic::transport::Channel;

pub const NET: &str = "worker-test";

/// Fields drop in order: workers, then the registry, then its database, then the files.
pub struct Swarm {
    pub registry: LayerRegistryClient<Channel>,
    pub registry_url: String,
    /// (process, listen port)
    pub workers: Vec<(ChildGuard, u16)>,
    /// diloco-aggregator processes: (process, listen port)
    pub aggregators: Vec<(ChildGuard, u16)>,
    aggregator_configs: Vec<toml::Table>,
    worker_configs: Vec<toml::Table>,
    pub local: LocalRegistry,
    launcher: Launcher,
    pub dir: tempfile::TempDir,
}

impl Swarm {
    /// PostgreSQL and a registry with fast liveness (heartbeat 200 ms, suspect 800 ms, dead
    /// 1.5 s), changed by `adjust`.
    pub async fn start(adjust: impl FnOnce(RegistryToml) -> RegistryToml) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let launcher = super::launcher(dir.path());
        let config = adjust(
            RegistryToml::new(NET)
                .tls(&TlsFiles::insecure_plaintext())
                .unwrap()
                .liveness(200, 800, 1500),
        );
        let local = LocalRegistry::start(&launcher, config, Duration::from_secs(20)).unwrap();
        let registry_url = local.registry.url.clone();
        Self {
            registry: super::registry_client(&registry_url).await,
            registry_url,
            workers: Vec::new(),
            aggregators: Vec::new(),
            aggregator_configs: Vec::new(),
            worker_configs: Vec::new(),
            local,
            launcher,
            dir,
        }
    }

    /// Starts a worker process (CPU, one thread, heartbeat 200 ms), its config changed by
    /// `adjust`.
    pub fn add_worker(&mut self, adjust: impl FnOnce(WorkerToml) -> WorkerToml) {
        let i = self.workers.len();
        let port = free_port().unwrap();
        let key_file = self.dir.path().join(format!("w{i}.key"));
        let config = WorkerToml::new(port, &self.registry_url, NET, &key_file)
            .unwrap()
            .tls(&TlsFiles::insecure_plaintext())
            .unwrap()
            .heartbeat_ms(200);
        let table = adjust(config).table().clone();
        let process = self
            .launcher
            .spawn(
                neuroshard_local::WORKER_BINARY,
                &format!("worker-{i}"),
                &table,
                &[("OMP_NUM_THREADS", "1")],
            )
            .unwrap();
        self.worker_configs.push(table);
        self.workers.push((process, port));
    }

    /// Starts worker `i` again as it was first started (same key, port and config), after
    /// it was killed.
    pub fn restart_worker(&mut self, i: usize) {
        let process = self
            .launcher
            .respawn(
                neuroshard_local::WORKER_BINARY,
                &format!("worker-{i}"),
                &self.worker_configs[i],
                &[("OMP_NUM_THREADS", "1")],
            )
            .unwrap();
        self.workers[i].0 = process;
    }

    /// Starts a diloco-aggregator process (plaintext, its own database, key and state under
    /// the swarm's directory), its config changed by `adjust`; waits until it listens (it
    /// listens once the registry has published an architecture). Returns its URL.
    pub fn add_aggregator(
        &mut self,
        adjust: impl FnOnce(AggregatorToml) -> AggregatorToml,
    ) -> String {
        self.add_aggregator_on(free_port().unwrap(), adjust)
    }

    /// [`Swarm::add_aggregator`] on a port chosen before (workers may have been told it).
    pub fn add_aggregator_on(
        &mut self,
        port: u16,
        adjust: impl FnOnce(AggregatorToml) -> AggregatorToml,
    ) -> String {
        let i = self.aggregators.len();
        let name = format!("aggregator-{i}");
        let database = self
            .local
            .pg
            .create_database(&format!("aggregator{i}"))
            .unwrap();
        let config = AggregatorToml::new(
            NET,
            port,
            &self.registry_url,
            &database,
            &self.dir.path().join(format!("{name}.key")),
            &self.dir.path().join(&name),
        )
        .unwrap()
        .tls(&TlsFiles::insecure_plaintext())
        .unwrap();
        self.aggregator_configs.push(adjust(config).table().clone());
        self.aggregators
            .push((self.start_aggregator(i, port, false), port));
        format!("http://127.0.0.1:{port}")
    }

    /// Starts aggregator `i` again with the config it was first started with (same key,
    /// database and state), after it was killed.
    pub fn restart_aggregator(&mut self, i: usize) {
        let port = self.aggregators[i].1;
        self.aggregators[i].0 = self.start_aggregator(i, port, true);
    }

    /// Starts aggregator `i` from its config (afresh, or keeping its log) and waits until it
    /// listens on `port`.
    fn start_aggregator(&self, i: usize, port: u16, again: bool) -> ChildGuard {
        let name = format!("aggregator-{i}");
        let (table, env) = (&self.aggregator_configs[i], &[("OMP_NUM_THREADS", "1")]);
        let binary = neuroshard_local::AGGREGATOR_BINARY;
        let mut process = if again {
            self.launcher.respawn(binary, &name, table, env)
        } else {
            self.launcher.spawn(binary, &name, table, env)
        }
        .unwrap();
        self.launcher
            .wait_for_port(
                &mut process,
                port,
                Instant::now() + Duration::from_secs(60),
                &name,
            )
            .unwrap();
        process
    }

    pub async fn snapshot(&mut self) -> AssignmentSnapshot {
        self.registry
            .get_assignment(GetAssignmentRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn routes(&mut self, max_routes: u32) -> Vec<Route> {
        self.registry
            .routes(RoutesRequest { max_routes })
            .await
            .unwrap()
            .into_inner()
            .routes
    }

    /// Waits until `ready` holds for the assignment and every live assigned worker has loaded
    /// its span of the published architecture.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&AssignmentSnapshot) -> bool,
    ) -> AssignmentSnapshot {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.snapshot().await;
            if ready(&s) && all_loaded(&s).await {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether every live node with a span reports that span of the snapshot's architecture.
async fn all_loaded(s: &AssignmentSnapshot) -> bool {
    let Some(arch) = &s.architecture else {
        return false;
    };
    for node in s
        .nodes
        .iter()
        .filter(|n| n.span.is_some() && n.state == NodeState::Live as i32)
    {
        let Ok(mut worker) = ShardWorkerClient::connect(node.endpoint.clone()).await else {
            return false;
        };
        let info = worker.info(InfoRequest {}).await.map(|r| r.into_inner());
        if !info.is_ok_and(|i| i.span == node.span && i.architecture_version == arch.version) {
            return false;
        }
    }
    true
}

/// Memory for a worker offering room for `layers` layers of `config` plus its embedding or
/// head and half a layer (counted as the registry counts for training): enough for such a
/// span, never for a bigger one, so the registry cuts the model into spans of `layers`.
pub fn memory_for_layers(config: &neuroshard_common::ModelConfig, layers: u64) -> u64 {
    use neuroshard_common::architecture::{
        TRAINING_BYTES_PER_PARAM, embedding_parameters, head_parameters, layer_parameters,
    };
    let layer = layer_parameters(config) as u64;
    let ends = embedding_parameters(config).max(head_parameters(config)) as u64;
    (layers * layer + ends + layer / 2) * TRAINING_BYTES_PER_PARAM
}

/// Fewest holders of any layer (0 without an architecture).
pub fn min_holders(s: &AssignmentSnapshot) -> u32 {
    let layers = s.architecture.as_ref().map_or(0, |a| a.num_layers);
    (0..layers)
        .map(|l| {
            s.nodes
                .iter()
                .filter(|n| n.span.is_some_and(|sp| sp.start <= l && l < sp.end))
                .count() as u32
        })
        .min()
        .unwrap_or(0)
}

/// The worker session id of a test's `label`: the label's bytes in hex, zero-padded to the
/// 32 hex digits workers require of an id. Tests want readable, repeatable ids; callers in
/// service use random ones.
pub fn session_id(label: &str) -> String {
    let hex: String = label.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0>32}")
}

/// Runs `tokens` through `route` for the session labelled `session` at `position` with the
/// worker client's default options; returns the last position's logits.
pub async fn through(route: &Route, session: &str, tokens: &[i64], position: u32) -> Vec<f32> {
    through_with(ClientOptions::default(), route, session, tokens, position).await
}

/// [`through`] with the worker client configured by `options`.
pub async fn through_with(
    options: ClientOptions,
    route: &Route,
    session: &str,
    tokens: &[i64],
    position: u32,
) -> Vec<f32> {
    let mut hidden: Option<WireTensor> = None;
    for (i, hop) in route.hops.iter().enumerate() {
        let mut worker = WorkerClient::connect(&hop.endpoint, options).await.unwrap();
        let request = ForwardRequest {
            session_id: session_id(session),
            span: hop.span,
            tokens: if i == 0 { tokens.to_vec() } else { Vec::new() },
            hidden: hidden.take(),
            position,
        };
        hidden = worker.forward(request).await.unwrap().output;
    }
    decode_f32(&hidden.unwrap(), "logits", &Limits::default()).unwrap()
}

/// Logits of every position of `tokens` from `model` run in-process: [seq, vocab].
pub fn in_process_logits(model: &Shard, tokens: &[i64]) -> Tensor {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let t = Tensor::from_slice(tokens).view([1, -1]);
    model.forward(ShardInput::Tokens(&t), None).unwrap().get(0)
}

pub fn max_diff(a: &[f32], b: &Tensor) -> f64 {
    let b = Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap();
    max_abs_diff(a, &b)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}
