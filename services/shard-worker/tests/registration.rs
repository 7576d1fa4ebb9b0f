//! What a worker claims of itself: throughput measured on the layers of the architecture the
//! registry publishes (measured again, and registered again, when that shape changes), and
//! memory no larger than what its device has free.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test registration

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::growth::ArchitectureState;
use neuroshard_proto::registry::v1::Device;
use neuroshard_shard_worker::WorkerConfig;
use neuroshard_shard_worker::capacity::{Memory, free_memory};
use support::{FakeRegistry, SEED};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_is_measured_again_on_a_new_architectures_layers() {
    neuroshard_model::tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let (key_file, node_id) = support::worker_key(dir.path());
    // No architecture yet: the worker measures on the default model's layers.
    let registry = FakeRegistry::new(&node_id, None);
    let url = registry.clone().serve().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = WorkerConfig {
        registry: url,
        key_file,
        init_seed: SEED,
        device: "cpu".into(),
        heartbeat_interval_ms: 100,
        tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
        ..WorkerConfig::default()
    };
    tokio::spawn(neuroshard_shard_worker::run(
        config,
        listener,
        std::future::pending(),
    ));
    let registrations = |n: usize| {
        let registry = registry.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let heard = registry.heard.lock().unwrap().registrations.clone();
                if heard.len() >= n {
                    return heard;
                }
                assert!(Instant::now() < deadline, "{} registrations", heard.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = registrations(1).await[0];
    assert_eq!(first.device, Device::Cpu as i32);
    assert!(first.tokens_per_second > 0.0);
    let host_free = free_memory(Memory::Host).unwrap();
    assert!(
        first.usable_memory_bytes > 0 && first.usable_memory_bytes <= host_free,
        "{} claimed, {host_free} free",
        first.usable_memory_bytes
    );

    // An architecture four times as wide as the default: its layers cost more per token.
    registry.publish(ArchitectureState::genesis(support::config()));
    let heard = registrations(2).await;
    let second = heard[1];
    assert_eq!(second.usable_memory_bytes, first.usable_memory_bytes);
    assert!(
        second.tokens_per_second < first.tokens_per_second / 2.0,
        "tokens/s {} on the default model's layers, {} on the architecture's (wider) ones",
        first.tokens_per_second,
        second.tokens_per_second
    );
    // Growth in depth keeps the layer shape: nothing to measure again.
    let mut deeper = support::config();
    deeper.num_layers += 2;
    registry.publish(ArchitectureState {
        version: 2,
        ..ArchitectureState::genesis(deeper)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(registry.heard.lock().unwrap().registrations.len(), 2);
}
