//! DiLoCo rounds through real processes: PostgreSQL, the layer registry, the diloco-aggregator
//! and four shard-worker processes placed as two pipelines of two stages, on a tiny model.
//!
//! - Distributed = simulated: three rounds of the workers' Drivers end with global weights
//!   equal (≤ 1e-5) to `neuroshard_model::diloco::simulate` of the same rounds (same data,
//!   inner optimizer, int8 Δ, rule and outer step); every submission gets a receipt that the
//!   aggregator signed.
//! - Bad input: NaN Δ, a wrong shape, a bad commitment, a replayed submission, a span the node
//!   did not hold, an unknown node and a closed round are each refused with signed evidence,
//!   and the round closes on the honest submissions alone, as the outer step computes it.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-tests --test diloco_rounds

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use neuroshard_aggregation::outer::{OuterConfig, OuterState};
use neuroshard_aggregation::ownership::in_span;
use neuroshard_aggregation::round::{Named, RoundPlan, outer_round};
use neuroshard_common::ModelConfig;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::verify;
use neuroshard_model::data::TokenShards;
use neuroshard_model::diloco::{DilocoOptions, named, simulate, through_int8};
use neuroshard_model::training::TrainOptions;
use neuroshard_model::{Shard, ShardSpec, checkpoint};
use neuroshard_proto::aggregator::v1::aggregator_client::AggregatorClient;
use neuroshard_proto::aggregator::v1::submit_message::Part;
use neuroshard_proto::aggregator::v1::{
    Evidence, GetRoundRequest, ListRoundsRequest, Receipt, RoundReport, RoundReportRequest,
    RoundState, SubmitMessage,
};
use neuroshard_proto::registry::v1::AssignmentSnapshot;
use neuroshard_worker_client::aggregator::{DeltaSubmission, NamedDelta, submission};
use prost::Message;
use support::checkpoints::{corpus_dataset, seeded_model};
use support::swarm::{Swarm, memory_for_layers};
use tonic::transport::Channel;

const SEED: u64 = 11;
const H: u64 = 4;
const ROUNDS: u64 = 3;
const BATCH: u64 = 8;
const MICRO_BATCHES: u64 = 4;
const SEQ: u64 = 16;
const SHARDS_PER_ROUND: u64 = 2;
const LR: f64 = 1e-3;
const WARMUP: u64 = 2;

/// Two layers, narrow: each stage of a 2-stage pipeline holds one.
fn config(vocab: i64) -> ModelConfig {
    ModelConfig {
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 64,
        max_seq_len: 32,
        ..ModelConfig::small(vocab)
    }
}

/// The workers' `[training]`: the Drivers' batches, inner optimizer and learning-rate
/// schedule (decaying over the three rounds, as the simulation's does).
fn training(data: &Path) -> toml::Table {
    let mut t = toml::Table::new();
    for (key, value) in [
        ("enabled", toml::Value::from(true)),
        ("data_dir", data.to_str().unwrap().into()),
        ("batch_size", (BATCH as i64).into()),
        ("micro_batches", (MICRO_BATCHES as i64).into()),
        ("seq_len", (SEQ as i64).into()),
        ("shards_per_round", (SHARDS_PER_ROUND as i64).into()),
        ("lr", LR.into()),
        ("warmup_steps", (WARMUP as i64).into()),
        ("lr_decay_steps", ((H * ROUNDS) as i64).into()),
        ("step_deadline_ms", 60_000.into()),
        ("retry_ms", 200.into()),
    ] {
        t.insert(key.into(), value);
    }
    t
}

/// A registry with `config` fixed, and four workers from the checkpoint of seed [`SEED`],
/// each with memory for one layer: two pipelines of two stages. Returns the swarm, the
/// checkpoint and the dataset.
/// `aggregators`: the URLs the workers follow and submit to (any also turns their Drivers
/// on).
async fn two_pipelines(
    dir_for_data: &Path,
    aggregators: &[&str],
) -> (Swarm, ModelConfig, std::path::PathBuf, std::path::PathBuf) {
    let data = corpus_dataset(dir_for_data, 300);
    let vocab = neuroshard_model::data::Manifest::read(&data)
        .unwrap()
        .vocab_size;
    let config = config(i64::from(vocab));
    let mut swarm = Swarm::start(|r| r.model(&config).unwrap()).await;
    let ckpt = swarm.dir.path().join("ckpt");
    checkpoint::save(&ckpt, &seeded_model(&config, SEED), None, 0).unwrap();
    let memory = memory_for_layers(&config, 1);
    for _ in 0..4 {
        let (ckpt, data) = (ckpt.clone(), data.clone());
        swarm.add_worker(move |w| {
            let w = w.checkpoint(&ckpt).unwrap().usable_memory_bytes(memory);
            if aggregators.is_empty() {
                w
            } else {
                w.training(training(&data)).aggregators(aggregators)
            }
        });
    }
    swarm
        .wait_for(
            "two pipelines of two stages",
            Duration::from_secs(120),
            |s| s.pipelines.len() == 2 && s.pipelines.iter().all(|p| p.node_ids.len() == 2),
        )
        .await;
    (swarm, config, ckpt, data)
}

async fn client(url: &str) -> AggregatorClient<Channel> {
    AggregatorClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(1 << 30)
}

/// Waits until the aggregator has published round `round`.
async fn published(url: &str, round: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut c = client(url).await;
    loop {
        let listed = c
            .list_rounds(ListRoundsRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner();
        if listed.published_round >= round {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round} was not published within {limit:?}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The checkpoint aggregator 0 wrote for round `round`, by name.
fn published_weights(swarm: &Swarm, round: u64) -> Named {
    weights_in(
        &swarm
            .dir
            .path()
            .join("aggregator-0")
            .join("rounds")
            .join(format!("{round:08}")),
    )
}

/// The whole-model checkpoint in `dir`, by name.
fn weights_in(dir: &Path) -> Named {
    let config = checkpoint::read_config(dir).unwrap();
    let shard = checkpoint::load_shard(
        dir,
        ShardSpec::full(config.num_layers),
        neuroshard_model::tch::Device::Cpu,
        neuroshard_model::tch::Kind::Float,
    )
    .unwrap();
    named(&shard).unwrap()
}

async fn report(url: &str, round: u64) -> RoundReport {
    client(url)
        .await
        .round_report(RoundReportRequest { round })
        .await
        .unwrap()
        .into_inner()
}

fn max_abs_diff(a: &Named, b: &Named) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{name}");
        for (p, q) in x.iter().zip(y) {
            let d = f64::from((p - q).abs());
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rounds_through_processes_equal_the_in_process_simulation() {
    let _alone = support::one_swarm_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    // The aggregator starts once both pipelines stand, so round 1 waits for both (the
    // Drivers wait for a round until it answers).
    let port = neuroshard_local::free_port().unwrap();
    let aggregator_url = format!("http://127.0.0.1:{port}");
    let (mut swarm, config, ckpt, data) = two_pipelines(dir.path(), &[&aggregator_url]).await;
    {
        let (ckpt, data) = (ckpt.clone(), data.clone());
        swarm.add_aggregator_on(port, move |a| {
            a.checkpoint(&ckpt)
                .unwrap()
                .held_out(&data, SEQ, 8)
                .unwrap()
                .rounds(H, 300_000, 1)
                .rule("mean", 0)
                .outer(0.7, 0.9)
                .keep_rounds(100_000)
        });
    }
    let started = Instant::now();
    published(&aggregator_url, ROUNDS, Duration::from_secs(600)).await;
    eprintln!(
        "{ROUNDS} rounds through processes in {:?}",
        started.elapsed()
    );

    let distributed = published_weights(&swarm, ROUNDS);

    let options = simulation();
    let shards = TokenShards::open(&data).unwrap();
    let (simulated, records) = simulate(seeded_model(&config, SEED), &shards, &options).unwrap();
    let simulated = named(&simulated).unwrap();
    let (diff, name) = max_abs_diff(&distributed, &simulated);
    eprintln!("distributed vs simulated after {ROUNDS} rounds: max abs diff {diff:e} ({name})");
    assert!(diff <= 1e-5, "{name} differs by {diff}");
    let (moved, _) = max_abs_diff(&distributed, &named(&seeded_model(&config, SEED)).unwrap());
    assert!(
        moved > 1e-3,
        "the rounds did not move the weights ({moved})"
    );

    // `neuroshard model export --from URL` writes the round the aggregator publishes.
    let export = dir.path().join("export");
    let round = run_export(&aggregator_url, &export).unwrap_or_else(|said| panic!("{said}"));
    let export_weights = weights_in(&export);
    assert_eq!(
        max_abs_diff(&export_weights, &published_weights(&swarm, round)).0,
        0.0
    );

    // Every stage's Δ was accepted each round and got a receipt the aggregator signed.
    let aggregator_id = client(&aggregator_url)
        .await
        .get_round(GetRoundRequest {})
        .await
        .unwrap()
        .into_inner()
        .aggregator_id;
    for round in 1..=ROUNDS {
        let report = report(&aggregator_url, round).await;
        assert_eq!(report.submissions.len(), 4, "round {round}: {report:?}");
        assert!(
            report
                .submissions
                .iter()
                .all(|s| s.accepted && s.flags.is_empty()),
            "{report:?}"
        );
        assert!(report.submissions.iter().all(|s| s.score.is_finite()));
        assert_eq!(report.receipts.len(), 4);
        for envelope in &report.receipts {
            let verified = verify(envelope, support::swarm::NET, "Receipt").unwrap();
            assert_eq!(verified.node_id, aggregator_id);
            let receipt = Receipt::decode(verified.payload.as_slice()).unwrap();
            assert_eq!(receipt.round, round);
            assert_eq!(receipt.tokens, H * BATCH * SEQ);
        }
        let simulated_held_out = records[round as usize - 1].held_out;
        eprintln!(
            "round {round}: held-out {:.4} (the simulation's own windows: {simulated_held_out:.4}), {} bytes",
            report.held_out, report.bytes
        );
        assert!(report.held_out.is_finite());
    }
}

/// What the workers' Drivers and the aggregator do, as one process simulates it: two
/// replicas, the same batches, inner optimizer and schedule, int8 Δ, the mean, Nesterov
/// 0.7 / 0.9; [`ROUNDS`] rounds, the length of the workers' learning-rate schedule.
fn simulation() -> DilocoOptions {
    DilocoOptions {
        replicas: 2,
        attackers: 0,
        attack: None,
        inner_steps: H,
        rounds: ROUNDS,
        train: TrainOptions {
            batch_size: BATCH as usize,
            seq_len: SEQ as usize,
            lr: LR,
            warmup_steps: WARMUP,
            micro_batches: MICRO_BATCHES as usize,
            ..TrainOptions::default()
        },
        plan: RoundPlan::mean(OuterConfig::default()),
        shards_per_round: SHARDS_PER_ROUND as usize,
        eval_windows: 8,
        wire_int8: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_splitting_the_layers_equal_the_simulation() {
    let _alone = support::one_swarm_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [
        neuroshard_local::free_port().unwrap(),
        neuroshard_local::free_port().unwrap(),
    ];
    let urls = ports.map(|p| format!("http://127.0.0.1:{p}"));
    let (mut swarm, config, ckpt, data) =
        two_pipelines(dir.path(), &[urls[0].as_str(), urls[1].as_str()]).await;
    // The first owns the embedding and layer 0, the second layer 1, the norm and the head.
    for (port, (start, end)) in ports.into_iter().zip([(0, Some(1)), (1, None)]) {
        let ckpt = ckpt.clone();
        swarm.add_aggregator_on(port, move |a| {
            a.checkpoint(&ckpt)
                .unwrap()
                .rounds(H, 300_000, 1)
                .rule("mean", 0)
                .keep_rounds(100_000)
                .layers(start, end)
        });
    }
    for url in &urls {
        published(url, ROUNDS, Duration::from_secs(600)).await;
    }
    let combined = combined_round(&swarm, &urls, ROUNDS).await;
    let shards = TokenShards::open(&data).unwrap();
    let (simulated, _) = simulate(seeded_model(&config, SEED), &shards, &simulation()).unwrap();
    let simulated = named(&simulated).unwrap();
    assert_eq!(
        combined.len(),
        simulated.len(),
        "the two own every tensor between them"
    );
    let (diff, name) = max_abs_diff(&combined, &simulated);
    eprintln!("two aggregators vs simulated after {ROUNDS} rounds: max abs diff {diff:e} ({name})");
    assert!(diff <= 1e-5, "{name} differs by {diff}");
    // `model export --from A,B` joins the aggregators' parts of the round they publish (they
    // may be a close apart: then it says they disagree, and is asked again).
    let export = dir.path().join("export");
    let round = (0..50)
        .find_map(|_| match run_export(&urls.join(","), &export) {
            Ok(round) => Some(round),
            Err(said) => {
                assert!(said.contains("disagree"), "{said}");
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("the aggregators never agreed on a round");
    let joined = combined_round(&swarm, &urls, round).await;
    assert_eq!(max_abs_diff(&weights_in(&export), &joined).0, 0.0);

    // Each round, each aggregator took a part from each of the four stages' spans it owns.
    for url in &urls {
        let report = report(url, 1).await;
        assert_eq!(report.submissions.len(), 2, "{report:?}");
        assert!(report.submissions.iter().all(|s| s.accepted));
    }
}

/// `neuroshard model export --from <from> --out <out>`: the round it exported, or what it said
/// when it failed.
fn run_export(from: &str, out: &Path) -> Result<u64, String> {
    let run = std::process::Command::new(support::bin_dir().join("neuroshard"))
        .args(["model", "export", "--from", from, "--out"])
        .arg(out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr).into_owned();
    if !run.status.success() {
        return Err(said);
    }
    said.split_whitespace()
        .skip_while(|w| *w != "round")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or(said)
}

/// Round `round`'s global weights, each tensor from the aggregator that owns it (each one's
/// checkpoint holds its own layers as published, the rest as it began).
async fn combined_round(swarm: &Swarm, urls: &[String], round: u64) -> Named {
    let mut combined = Named::new();
    for (i, url) in urls.iter().enumerate() {
        let state = client(url)
            .await
            .get_round(GetRoundRequest {})
            .await
            .unwrap()
            .into_inner();
        let owns = neuroshard_worker_client::aggregator::ownership_of(&state);
        let weights = weights_in(
            &swarm
                .dir
                .path()
                .join(format!("aggregator-{i}"))
                .join("rounds")
                .join(format!("{round:08}")),
        );
        combined.extend(weights.into_iter().filter(|(n, _)| owns.owns(n)));
    }
    combined
}

/// A node's part of the model: its key, span and pipeline.
struct Holder {
    key: NodeKey,
    span: (u32, u32),
    pipeline: String,
}

fn holders(swarm: &Swarm, snapshot: &AssignmentSnapshot) -> Vec<Holder> {
    let mut out = Vec::new();
    for i in 0..swarm.workers.len() {
        let key = NodeKey::load(&swarm.dir.path().join(format!("w{i}.key"))).unwrap();
        let node = snapshot
            .nodes
            .iter()
            .find(|n| n.node_id == key.node_id())
            .unwrap();
        let span = node.span.unwrap();
        let pipeline = snapshot
            .pipelines
            .iter()
            .position(|p| p.node_ids.contains(&node.node_id))
            .unwrap();
        out.push(Holder {
            key,
            span: (span.start, span.end),
            pipeline: format!("p{pipeline}"),
        });
    }
    out
}

/// Small, seeded Δ for every tensor of `span`.
fn deltas(
    model: &Named,
    shapes: &BTreeMap<String, Vec<i64>>,
    span: (u32, u32),
    salt: u64,
) -> Vec<NamedDelta> {
    model
        .iter()
        .filter(|(name, _)| in_span(name, span, 2))
        .map(|(name, values)| {
            let delta = (0..values.len() as u64)
                .map(|i| (((i * 7919 + salt * 104_729) % 2_003) as f32 / 2_003.0 - 0.5) * 1e-2)
                .collect();
            (name.clone(), shapes[name].clone(), delta)
        })
        .collect()
}

async fn send(url: &str, messages: Vec<SubmitMessage>) -> Result<(), tonic::Status> {
    client(url)
        .await
        .submit(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

fn refused(result: Result<(), tonic::Status>, code: tonic::Code, says: &str) {
    let status = result.expect_err("a bad submission was accepted");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(says),
        "{:?} lacks {says:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_evidence_and_the_round_is_unaffected() {
    let _alone = support::one_swarm_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut swarm, config, ckpt, _) = two_pipelines(dir.path(), &[]).await;
    let url = {
        let ckpt = ckpt.clone();
        swarm.add_aggregator(move |a| {
            a.checkpoint(&ckpt)
                .unwrap()
                .rounds(10, 600_000, 1)
                .rule("mean", 0)
        })
    };
    let snapshot = swarm.snapshot().await;
    let nodes = holders(&swarm, &snapshot);
    let model: Shard = seeded_model(&config, SEED);
    let theta = named(&model).unwrap();
    let shapes: BTreeMap<String, Vec<i64>> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    let state: RoundState = client(&url)
        .await
        .get_round(GetRoundRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.round, 1);
    let honest: Vec<Vec<NamedDelta>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| deltas(&theta, &shapes, n.span, i as u64))
        .collect();
    let messages =
        |holder: &Holder, nonce: u64, round: u64, span: (u32, u32), delta: &[NamedDelta]| {
            submission(
                &holder.key,
                support::swarm::NET,
                nonce,
                &state,
                &DeltaSubmission {
                    round,
                    span,
                    pipeline_id: &holder.pipeline,
                    tokens: 100,
                    deltas: delta,
                },
                4096,
            )
            .unwrap()
            .unwrap()
            .0
        };
    let first = &nodes[0];
    let nonces = neuroshard_common::signing::NonceSource::new();
    let nonce = || nonces.next();

    // NaN in an f32 Δ.
    let mut nan = honest[0].clone();
    nan[0].2[3] = f32::NAN;
    let with_nan = {
        // Replace the first tensor's chunks by an f32 tensor holding the NaN, re-committed.
        let f32_tensor = neuroshard_common::tensor::encode_f32(&nan[0].1, &nan[0].2);
        let mut commitment = neuroshard_common::tensor::Commitment::default();
        let mut chunks = vec![SubmitMessage {
            part: Some(Part::Chunk(
                neuroshard_proto::trainer::v1::NamedTensorChunk {
                    name: nan[0].0.clone(),
                    chunk: Some(
                        neuroshard_common::tensor::chunk(&f32_tensor, usize::MAX).remove(0),
                    ),
                },
            )),
        }];
        commitment.add(&nan[0].0, &f32_tensor);
        for (name, shape, values) in &nan[1..] {
            let wire = neuroshard_common::tensor::encode_int8_block(shape, values, 64).unwrap();
            commitment.add(name, &wire);
            chunks.push(SubmitMessage {
                part: Some(Part::Chunk(
                    neuroshard_proto::trainer::v1::NamedTensorChunk {
                        name: name.clone(),
                        chunk: Some(neuroshard_common::tensor::chunk(&wire, usize::MAX).remove(0)),
                    },
                )),
            });
        }
        let header = neuroshard_proto::aggregator::v1::SubmitHeader {
            round: 1,
            span: Some(neuroshard_proto::common::v1::LayerSpan {
                start: first.span.0,
                end: first.span.1,
            }),
            pipeline_id: first.pipeline.clone(),
            tokens: 100,
            commitment: commitment.finish().to_vec(),
            aggregator_id: state.aggregator_id.clone(),
        };
        let envelope = neuroshard_common::signing::sign(
            &first.key,
            support::swarm::NET,
            "SubmitHeader",
            nonce(),
            neuroshard_common::signing::now_ms(),
            header.encode_to_vec(),
        )
        .unwrap();
        std::iter::once(SubmitMessage {
            part: Some(Part::Header(envelope)),
        })
        .chain(chunks)
        .collect::<Vec<_>>()
    };
    refused(
        send(&url, with_nan).await,
        tonic::Code::InvalidArgument,
        "NaN",
    );

    // A wrong shape: the first tensor flattened.
    let mut flat = honest[0].clone();
    flat[0].1 = vec![flat[0].2.len() as i64];
    refused(
        send(&url, messages(first, nonce(), 1, first.span, &flat)).await,
        tonic::Code::InvalidArgument,
        "shape",
    );

    // A commitment the bytes do not match: one chunk's byte changed after signing.
    let mut tampered = messages(first, nonce(), 1, first.span, &honest[0]);
    if let Some(Part::Chunk(c)) = tampered[1].part.as_mut() {
        let data = &mut c.chunk.as_mut().unwrap().data;
        let last = data.len() - 1;
        data[last] ^= 0x01;
    }
    refused(
        send(&url, tampered).await,
        tonic::Code::InvalidArgument,
        "commitment",
    );

    // A span the node did not hold.
    let other = nodes.iter().position(|n| n.span != first.span).unwrap();
    refused(
        send(
            &url,
            messages(first, nonce(), 1, nodes[other].span, &honest[other]),
        )
        .await,
        tonic::Code::PermissionDenied,
        "did not hold",
    );

    // An unknown node.
    let stranger = Holder {
        key: NodeKey::generate(),
        span: first.span,
        pipeline: first.pipeline.clone(),
    };
    refused(
        send(
            &url,
            messages(&stranger, nonce(), 1, first.span, &honest[0]),
        )
        .await,
        tonic::Code::PermissionDenied,
        "held no span",
    );

    // A round that is not open (a late submission names the round it missed).
    refused(
        send(&url, messages(first, nonce(), 0, first.span, &honest[0])).await,
        tonic::Code::FailedPrecondition,
        "round 0 is closed",
    );

    // The honest submissions, one of them replayed.
    let mut envelopes = Vec::new();
    for (i, holder) in nodes.iter().enumerate() {
        let sent = messages(holder, nonce(), 1, holder.span, &honest[i]);
        envelopes.push(sent.clone());
        if i < nodes.len() - 1 {
            send(&url, sent).await.unwrap();
        }
    }
    refused(
        send(&url, envelopes[0].clone()).await,
        tonic::Code::FailedPrecondition,
        "replay",
    );
    send(&url, envelopes[nodes.len() - 1].clone())
        .await
        .unwrap();

    published(&url, 1, Duration::from_secs(60)).await;
    let report = report(&url, 1).await;
    assert_eq!(report.submissions.len(), 4, "{report:?}");
    assert!(report.submissions.iter().all(|s| s.accepted));
    let kinds: Vec<String> = report
        .evidence
        .iter()
        .map(|e| {
            let v = verify(e, support::swarm::NET, "Evidence").unwrap();
            assert_eq!(v.node_id, state.aggregator_id);
            Evidence::decode(v.payload.as_slice()).unwrap().kind
        })
        .collect();
    for kind in [
        "non_finite",
        "shape",
        "commitment",
        "span",
        "unknown_node",
        "late",
        "replay",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} evidence in {kinds:?}"
        );
    }

    // The round is what the honest Δ make: the mean per layer, then Nesterov from θ_start.
    let mut per_pipeline: BTreeMap<&str, Named> = BTreeMap::new();
    for (i, holder) in nodes.iter().enumerate() {
        let entry = per_pipeline.entry(&holder.pipeline).or_default();
        for (name, _, values) in &honest[i] {
            entry.insert(name.clone(), through_int8(values).unwrap());
        }
    }
    let contributions: Vec<&Named> = per_pipeline.values().collect();
    let plan = RoundPlan::mean(OuterConfig::default());
    let mut momentum: BTreeMap<String, OuterState> = BTreeMap::new();
    let expected = outer_round(&theta, &contributions, &plan, None, &mut momentum)
        .unwrap()
        .theta_next;
    let published = published_weights(&swarm, 1);
    let (diff, name) = max_abs_diff(&published, &expected);
    assert!(diff <= 1e-6, "{name} differs by {diff}");
}

/// What the trainer service on worker port `port` reports (its Driver's pipelines, the round
/// it serves).
async fn worker_progress(port: u16) -> Option<neuroshard_proto::trainer::v1::ProgressResponse> {
    let ask = async {
        let mut client =
            neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient::connect(
                format!("http://127.0.0.1:{port}"),
            )
            .await
            .ok()?;
        client
            .progress(neuroshard_proto::trainer::v1::ProgressRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

async fn published_round(url: &str) -> u64 {
    client(url)
        .await
        .list_rounds(ListRoundsRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .published_round
}

/// Waits until `check` holds, polling every 100 ms, or fails naming `what`.
async fn eventually<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_or_aggregator_costs_at_most_the_round_in_progress() {
    let _alone = support::one_swarm_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let port = neuroshard_local::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let (mut swarm, _config, ckpt, data) = two_pipelines(dir.path(), &[&url]).await;
    {
        let (ckpt, data) = (ckpt.clone(), data.clone());
        swarm.add_aggregator_on(port, move |a| {
            a.checkpoint(&ckpt)
                .unwrap()
                .held_out(&data, SEQ, 4)
                .unwrap()
                .rounds(40, 120_000, 1)
                .keep_rounds(100)
        });
    }
    published(&url, 1, Duration::from_secs(300)).await;
    let snapshot = swarm.snapshot().await;
    let nodes = holders(&swarm, &snapshot);
    let ports: Vec<u16> = swarm.workers.iter().map(|w| w.1).collect();
    // The second stage of pipeline p1, and its Driver (the first stage).
    let victim = (0..nodes.len())
        .find(|&i| nodes[i].pipeline == "p1" && nodes[i].span.0 > 0)
        .unwrap();
    let driver = (0..nodes.len())
        .find(|&i| nodes[i].pipeline == "p1" && nodes[i].span.0 == 0)
        .unwrap();

    // kill -9 a stage mid-round: the round completes with the other pipeline.
    let round = published_round(&url).await + 1;
    eventually("p1 to be mid-round", Duration::from_secs(120), || async {
        worker_progress(ports[driver]).await.is_some_and(|p| {
            p.pipelines
                .iter()
                .any(|q| q.round == round && q.step >= 5 && q.state == "running")
        })
    })
    .await;
    swarm.workers[victim].0.kill();
    let killed_at = Instant::now();
    published(&url, round, Duration::from_secs(120)).await;
    eprintln!(
        "round {round} closed {:?} after a stage of p1 was killed",
        killed_at.elapsed()
    );
    let closed = report(&url, round).await;
    assert!(
        closed
            .submissions
            .iter()
            .all(|s| s.pipeline_id == "p0" && s.accepted),
        "{closed:?}"
    );
    assert_eq!(closed.submissions.len(), 2, "{closed:?}");

    // The node comes back and serves the global weights before it trains again.
    swarm.restart_worker(victim);
    let rejoined_at = Instant::now();
    eventually(
        "the restarted node to serve the latest weights",
        Duration::from_secs(120),
        || async {
            let latest = published_round(&url).await;
            worker_progress(ports[victim])
                .await
                .is_some_and(|p| p.served_round + 1 >= latest && p.served_round > 0)
        },
    )
    .await;
    eprintln!(
        "the restarted node served the global weights {:?} after it started",
        rejoined_at.elapsed()
    );
    // The round already open when it came back waits for p1 only if p1 was whole before
    // that round's first submission (a pipeline that forms mid-round is not waited for);
    // the round after opens with p1 live, so it trains in one of the two.
    let rejoined = published_round(&url).await;
    published(&url, rejoined + 2, Duration::from_secs(240)).await;
    let next = [
        report(&url, rejoined + 1).await,
        report(&url, rejoined + 2).await,
    ];
    assert!(
        next.iter()
            .any(|r| r.submissions.iter().any(|s| s.pipeline_id == "p1")),
        "p1 did not train again: {next:?}"
    );

    // kill -9 the aggregator mid-round: it comes back in the round after, from the weights
    // it had published.
    let before = published_round(&url).await;
    eventually("a round in progress", Duration::from_secs(120), || async {
        worker_progress(ports[driver]).await.is_some_and(|p| {
            p.pipelines
                .iter()
                .any(|q| q.round == before + 1 && q.step >= 5)
        })
    })
    .await;
    let weights_before = published_weights(&swarm, before);
    swarm.aggregators[0].0.kill();
    swarm.restart_aggregator(0);
    let state = client(&url)
        .await
        .get_round(GetRoundRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.round,
        before + 2,
        "the round in progress is closed without change: {state:?}"
    );
    assert_eq!(state.weights_round, before + 1);
    let lost = report(&url, before + 1).await;
    assert!(
        lost.notes.values().any(|n| n.contains("restarted")),
        "{lost:?}"
    );
    // The weights it serves are those it had published.
    let served = neuroshard_worker_client::aggregator::Aggregators::new(
        vec![url.clone()],
        neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
        1 << 30,
    )
    .fetch(0, (0, 2), neuroshard_common::tensor::Limits::default())
    .await
    .unwrap();
    for (name, values) in &weights_before {
        let got = neuroshard_common::tensor::decode_f32(&served[name], name, &Default::default())
            .unwrap();
        assert_eq!(&got, values, "{name}");
    }
    // And the rounds go on, with both pipelines.
    published(&url, before + 2, Duration::from_secs(180)).await;
    let resumed = report(&url, before + 2).await;
    assert_eq!(resumed.submissions.len(), 4, "{resumed:?}");
}
