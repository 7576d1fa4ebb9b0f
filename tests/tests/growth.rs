//! Live depth growth with real processes: PostgreSQL, the registry in `auto` mode and shard
//! workers initialised from the agreed seed. Four workers make the registry choose a 4-layer
//! genesis model; two more make it grow to 6 layers (appended as identity blocks); the workers
//! load the new spans, every layer is back at two holders, and a pipelined forward gives the
//! same logits as before the growth (and as the genesis model run in-process).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::ModelConfig;
use neuroshard_common::growth::ArchitectureState;
use support::checkpoints::seeded_model;
use support::swarm::{Swarm, in_process_logits, max_abs_diff, max_diff, min_holders, through};

/// 50 MB per worker holds three layers of the 256-wide model plus its embedding or head, so
/// every span is a part of the model and forwards are multi-hop. With the depth curve scaled
/// by 22, four such workers choose 4 layers and six choose 6 (see layer-registry's shape.rs).
const WORKER_MEMORY: u64 = 50_000_000;
const SEED: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_grows_with_capacity_and_the_function_is_unchanged() {
    let mut swarm = Swarm::start(|registry| {
        // Settle time long enough for both new workers to join before the growth happens.
        registry
            .auto_architecture(4, 3000, 22.0)
            .model(&ModelConfig {
                vocab_size: 512,
                max_seq_len: 64,
                ..ModelConfig::small(4096)
            })
            .unwrap()
    })
    .await;
    let worker =
        |w: neuroshard_local::WorkerToml| w.usable_memory_bytes(WORKER_MEMORY).init_seed(SEED);
    for _ in 0..4 {
        swarm.add_worker(worker);
    }
    let genesis = swarm
        .wait_for("the genesis architecture", Duration::from_secs(60), |s| {
            s.nodes.len() == 4 && min_holders(s) >= 2
        })
        .await;
    let arch = ArchitectureState::from_proto(genesis.architecture.as_ref().unwrap()).unwrap();
    assert_eq!((arch.config.num_layers, arch.config.hidden_size), (4, 256));
    assert_eq!(arch.version, 1);

    let routes = swarm.routes(1).await;
    let route = &routes[0];
    assert!(route.hops.len() >= 2, "a multi-stage pipeline: {route:?}");
    let prompt = [5i64, 17, 300, 42, 7, 511, 9];
    let before = through(route, "before", &prompt, 0).await;
    let before_step = through(route, "before", &[88], 7).await;

    // The genesis model in-process, from the same seed.
    let model = seeded_model(&arch.config, SEED);
    let expected = in_process_logits(&model, &[&prompt[..], &[88]].concat());
    let d_model = max_diff(&before, &expected.get(6)).max(max_diff(&before_step, &expected.get(7)));
    assert!(
        d_model <= 1e-5,
        "pipeline vs in-process genesis model: {d_model:e}"
    );

    // More capacity: two more workers.
    let started = Instant::now();
    swarm.add_worker(worker);
    swarm.add_worker(worker);
    let grown = swarm
        .wait_for(
            "growth, replicas and loaded spans",
            Duration::from_secs(60),
            |s| {
                s.architecture.as_ref().is_some_and(|a| a.num_layers > 4)
                    && s.nodes.len() == 6
                    && min_holders(s) >= 2
                    && s.deficits.is_empty()
            },
        )
        .await;
    let elapsed = started.elapsed();
    let arch = ArchitectureState::from_proto(grown.architecture.as_ref().unwrap()).unwrap();
    eprintln!(
        "grew to {} layers (depths {:?}, architecture version {}) with every layer at >= 2 holders and loaded, {elapsed:?} after two workers were started",
        arch.config.num_layers,
        arch.depths(),
        arch.version
    );
    assert_eq!(arch.config.num_layers, 6);
    assert_eq!(arch.config.hidden_size, 256, "width never changes");
    assert_eq!(
        arch.depths(),
        vec![4, 6],
        "one growth, after the settle time"
    );
    assert!(arch.is_grown_layer(4) && arch.is_grown_layer(5) && !arch.is_grown_layer(3));

    let routes = swarm.routes(4).await;
    let route = &routes[0];
    assert!(route.hops.len() >= 2, "a multi-stage pipeline: {route:?}");
    assert_eq!(route.hops.last().unwrap().span.unwrap().end, 6);
    let after = through(route, "after", &prompt, 0).await;
    let after_step = through(route, "after", &[88], 7).await;
    let d = max_abs_diff(&before, &after).max(max_abs_diff(&before_step, &after_step));
    eprintln!("max abs diff of logits before vs after growth: {d:e}");
    assert!(d <= 1e-5, "{d:e}");
}
