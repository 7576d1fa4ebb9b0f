//! The harness writes each service's config as a TOML table without seeing the services'
//! config types (a library never depends on a deployable). Here every key it can write is
//! checked against those types, which refuse unknown keys: a misspelt or mistyped key fails
//! this test, not a swarm at start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::Path;

use neuroshard_common::ModelConfig;
use neuroshard_diloco_aggregator::AggregatorConfig;
use neuroshard_layer_registry::RegistryConfig;
use neuroshard_ledger::LedgerConfig;
use neuroshard_local::{AggregatorToml, GatewayToml, LedgerToml, RegistryToml, WorkerToml};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_shard_worker::WorkerConfig;
use neuroshard_swarm_gateway::GatewayConfig;
use serde::de::DeserializeOwned;

/// The table as the service reads it: through the file's text, onto its defaults.
fn read<T: DeserializeOwned>(table: &toml::Table) -> T {
    let text = toml::to_string(table).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn tls() -> TlsFiles {
    TlsFiles {
        cert_file: Some("tls.crt".into()),
        key_file: Some("tls.key".into()),
        ca_file: Some("ca.crt".into()),
        insecure_plaintext: false,
    }
}

#[test]
fn every_registry_key_is_one_the_registry_takes() {
    let model = ModelConfig {
        vocab_size: 512,
        ..ModelConfig::small(4096)
    };
    let toml = RegistryToml::new("net")
        .listen(7401)
        .database_url("host=127.0.0.1 port=1 user=postgres dbname=postgres")
        .liveness(200, 600, 1200)
        .watch_poll_ms(50)
        .model(&model)
        .unwrap()
        .auto_architecture(4, 1500, 22.0)
        .tls(&tls())
        .unwrap()
        .metrics_port(7402)
        .attesting(Path::new("registry.key"), 60_000)
        .unwrap();
    let config: RegistryConfig = read(toml.table());
    config.validate().unwrap();
    assert_eq!(config.listen, ([127, 0, 0, 1], 7401).into());
    assert_eq!(config.network_id, "net");
    assert_eq!(
        (
            config.heartbeat_interval_ms,
            config.suspect_after_ms,
            config.dead_after_ms,
            config.watch_poll_ms
        ),
        (200, 600, 1200, 50)
    );
    assert_eq!(config.model, model);
    assert_eq!(config.architecture.genesis_nodes, 4);
    assert_eq!(config.architecture.growth_settle_ms, 1500);
    assert_eq!(config.architecture.depth_curve_scale, 22.0);
    assert_eq!(config.tls, tls());
    assert_eq!(config.metrics_listen, Some(([127, 0, 0, 1], 7402).into()));
    assert_eq!(
        (config.signing_key_file, config.uptime_epoch_ms),
        (Some("registry.key".into()), 60_000)
    );
    // What the harness leaves out keeps the registry's default.
    assert_eq!(config.min_replicas, RegistryConfig::default().min_replicas);
}

#[test]
fn every_worker_key_is_one_the_worker_takes() {
    let toml = WorkerToml::new(7501, "https://127.0.0.1:7401", "net", Path::new("w.key"))
        .unwrap()
        .advertise("https://127.0.0.1:7501")
        .tls(&tls())
        .unwrap()
        .checkpoint(Path::new("ckpt"))
        .unwrap()
        .init_seed(5)
        .usable_memory_bytes(60_000_000)
        .heartbeat_ms(200)
        .message_limits(64 << 10, 16 << 10, 1 << 20, 64)
        .training(
            neuroshard_local::SwarmTraining::local("/data/genesis".into(), 7)
                .table()
                .unwrap(),
        )
        .aggregators(&["https://127.0.0.1:7601"])
        .ledger("https://127.0.0.1:7701", &"d".repeat(40));
    let config: WorkerConfig = read(toml.table());
    config.validate().unwrap();
    assert_eq!(
        config,
        WorkerConfig {
            listen: ([127, 0, 0, 1], 7501).into(),
            advertise: Some("https://127.0.0.1:7501".into()),
            registry: "https://127.0.0.1:7401".into(),
            network_id: "net".into(),
            key_file: "w.key".into(),
            checkpoint: Some("ckpt".into()),
            init_seed: 5,
            usable_memory_bytes: 60_000_000,
            device: "cpu".into(),
            heartbeat_interval_ms: 200,
            max_message_bytes: 64 << 10,
            stream_chunk_bytes: 16 << 10,
            max_tensor_bytes: 1 << 20,
            max_stream_chunks: 64,
            tls: tls(),
            aggregators: vec!["https://127.0.0.1:7601".into()],
            ledger: Some("https://127.0.0.1:7701".into()),
            payout: Some("d".repeat(40)),
            training: neuroshard_shard_worker::driver::TrainingConfig {
                enabled: true,
                data_dir: Some("/data/genesis".into()),
                inner_steps: 7,
                batch_size: 8,
                micro_batches: 4,
                seq_len: 64,
                lr: 1e-3,
                warmup_steps: 20,
                step_deadline_ms: 15_000,
                retry_ms: 1_000,
                ..Default::default()
            },
            ..WorkerConfig::default()
        }
    );
}

#[test]
fn every_gateway_key_is_one_the_gateway_takes() {
    let toml = GatewayToml::new(
        8081,
        "neurollm",
        Path::new("tokenizer.json"),
        "https://127.0.0.1:7401",
    )
    .unwrap()
    .api_key("sk-test-0123456789abcdef", &"c".repeat(40))
    .per_hop_deadline_ms(250)
    .backoff_ms(1_000)
    .tls(&tls())
    .unwrap()
    .training_report(Path::new("training.json"))
    .unwrap()
    .node_pids_file(Path::new("pids.json"))
    .unwrap()
    .aggregator("https://127.0.0.1:7601")
    .billing("https://127.0.0.1:7701", Path::new("gateway.key"), "net")
    .unwrap();
    let config: GatewayConfig = read(toml.table());
    assert_eq!(
        config.billing.ledger.as_deref(),
        Some("https://127.0.0.1:7701")
    );
    assert_eq!(
        config.billing.key_file.as_deref(),
        Some(Path::new("gateway.key"))
    );
    assert_eq!(config.billing.network_id, "net");
    config.validate().unwrap();
    assert_eq!(config.listen, ([127, 0, 0, 1], 8081).into());
    assert_eq!(config.model, "neurollm");
    assert_eq!(config.tokenizer, Path::new("tokenizer.json"));
    assert_eq!(config.registry, "https://127.0.0.1:7401");
    assert_eq!(config.api_keys.len(), 1);
    assert_eq!(config.api_keys[0].key, "sk-test-0123456789abcdef");
    assert_eq!(config.api_keys[0].account, "c".repeat(40));
    assert_eq!(
        (config.per_hop_deadline_ms, config.backoff_ms),
        (250, 1_000)
    );
    assert_eq!(config.tls, tls());
    assert_eq!(
        config.training_report.as_deref(),
        Some(Path::new("training.json"))
    );
    assert_eq!(
        config.node_pids_file.as_deref(),
        Some(Path::new("pids.json"))
    );
    assert_eq!(config.aggregator.as_deref(), Some("https://127.0.0.1:7601"));
}

#[test]
fn every_aggregator_key_is_one_the_aggregator_takes() {
    let toml = AggregatorToml::new(
        "net",
        7601,
        "https://127.0.0.1:7401",
        "host=127.0.0.1 port=1 user=postgres dbname=aggregator",
        Path::new("a.key"),
        Path::new("state"),
    )
    .unwrap()
    .tls(&tls())
    .unwrap()
    .checkpoint(Path::new("ckpt"))
    .unwrap()
    .init_seed(3)
    .held_out(Path::new("/data/genesis"), 64, 16)
    .unwrap()
    .rounds(50, 300_000, 2)
    .rule("median", 1)
    .outer(0.5, 0.8)
    .keep_rounds(4)
    .layers(2, Some(6))
    .keep_flagged();
    let config: AggregatorConfig = read(toml.table());
    config.validate().unwrap();
    assert_eq!(config.listen, ([127, 0, 0, 1], 7601).into());
    assert_eq!(config.network_id, "net");
    assert_eq!(config.registry, "https://127.0.0.1:7401");
    assert_eq!(config.key_file, Path::new("a.key"));
    assert_eq!(config.state_dir, Path::new("state"));
    assert_eq!(config.checkpoint.as_deref(), Some(Path::new("ckpt")));
    assert_eq!(config.init_seed, 3);
    assert_eq!(config.data_dir.as_deref(), Some(Path::new("/data/genesis")));
    assert_eq!((config.held_out_seq_len, config.held_out_windows), (64, 16));
    assert_eq!(
        (config.inner_steps, config.round_deadline_ms, config.quorum),
        (50, 300_000, 2)
    );
    assert_eq!((config.rule.as_str(), config.byzantine), ("median", 1));
    assert_eq!((config.outer.lr, config.outer.momentum), (0.5, 0.8));
    assert_eq!(config.keep_rounds, 4);
    assert_eq!((config.layers_start, config.layers_end), (2, Some(6)));
    assert!(!config.exclude_flagged);
    assert_eq!(config.tls, tls());
}

#[test]
fn every_ledger_key_is_one_the_ledger_takes() {
    let (a, g) = ("a".repeat(40), "b".repeat(40));
    let toml = LedgerToml::new(
        "net",
        7701,
        "host=127.0.0.1 port=1 user=postgres dbname=ledger",
    )
    .tls(&tls())
    .unwrap()
    .aggregators(&[&a])
    .gateways(&[&g])
    .registries(&[&a], 60_000)
    .tokens_per_batch(256)
    .tokens_per_sample(64)
    .escrow_ttl_ms(5_000);
    let config: LedgerConfig = read(toml.table());
    config.validate().unwrap();
    assert_eq!(config.listen, ([127, 0, 0, 1], 7701).into());
    assert_eq!(config.network_id, "net");
    assert_eq!((config.aggregators, config.gateways), (vec![a], vec![g]));
    assert_eq!(config.economics.tokens_per_batch, 256);
    assert_eq!(config.registries, vec!["a".repeat(40)]);
    assert_eq!(
        (
            config.economics.uptime_epoch_ms,
            config.economics.tokens_per_sample,
            config.economics.escrow_ttl_ms
        ),
        (60_000, 64, 5_000)
    );
    assert_eq!(config.tls, tls());
}
