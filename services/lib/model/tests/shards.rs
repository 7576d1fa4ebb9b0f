//! Shards, the KV cache, seeded initialisation and depth growth against the full model.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use neuroshard_model::growth::grow_depth;
use neuroshard_model::init::initialize;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec};

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 97,
        hidden_size: 64,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 96,
        rope_theta: 10_000.0,
        rms_eps: 1e-6,
        max_seq_len: 64,
    }
}

fn shard(spec: ShardSpec, kind: Kind) -> Shard {
    let mut s = Shard::new(&config(), spec, Device::Cpu, kind).unwrap();
    initialize(&mut s, 42).unwrap();
    s
}

fn tokens(n: i64) -> Tensor {
    Tensor::from_slice(&(0..n).map(|i| (i * 37 + 11) % 97).collect::<Vec<i64>>()).view([1, n])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn a_cover_of_shards_equals_the_full_model() {
    let full = shard(ShardSpec::full(4), Kind::Float);
    let input = tokens(10);
    let expected = full.forward(ShardInput::Tokens(&input), None).unwrap();
    assert_eq!(expected.size(), [1, 10, 97]);
    for cuts in [vec![0, 2, 4], vec![0, 1, 3, 4], vec![0, 4]] {
        let parts: Vec<Shard> = cuts
            .windows(2)
            .map(|w| shard(ShardSpec::span(w[0], w[1], 4).unwrap(), Kind::Float))
            .collect();
        let mut x = parts[0].forward(ShardInput::Tokens(&input), None).unwrap();
        for part in &parts[1..] {
            x = part.forward(ShardInput::Hidden(&x), None).unwrap();
        }
        assert!(max_diff(&x, &expected) < 1e-6, "cuts {cuts:?}");
    }
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    for kind in [Kind::Float, Kind::BFloat16] {
        let model = shard(ShardSpec::full(4), kind);
        let input = tokens(12);
        let expected = model.forward(ShardInput::Tokens(&input), None).unwrap();
        let mut cache = model.new_cache();
        // Prefill 5 positions, then a chunk of 3, then one at a time.
        let mut pieces = vec![
            model
                .forward(ShardInput::Tokens(&input.narrow(1, 0, 5)), Some(&mut cache))
                .unwrap(),
        ];
        pieces.push(
            model
                .forward(ShardInput::Tokens(&input.narrow(1, 5, 3)), Some(&mut cache))
                .unwrap(),
        );
        for t in 8..12 {
            pieces.push(
                model
                    .forward(ShardInput::Tokens(&input.narrow(1, t, 1)), Some(&mut cache))
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), 12);
        assert!(cache.size_bytes() > 0);
        // Truncated back to 8 positions, the cache decodes position 8 as it did the first time.
        let bytes = cache.size_bytes();
        cache.truncate(8);
        assert_eq!((cache.len(), cache.size_bytes()), (8, bytes * 8 / 12));
        let again = model
            .forward(ShardInput::Tokens(&input.narrow(1, 8, 1)), Some(&mut cache))
            .unwrap();
        assert!(max_diff(&again, &pieces[2]) < 1e-6, "{kind:?}");
        let incremental = Tensor::cat(&pieces, 1);
        let tol = if kind == Kind::Float { 1e-5 } else { 0.1 };
        assert!(max_diff(&incremental, &expected) < tol, "{kind:?}");
    }
}

/// Several sequences of different lengths, decoded one position each in one batched pass,
/// give what each gives decoded alone, and leave their caches as a lone decode would.
#[test]
fn a_decode_batch_equals_its_rows_decoded_alone() {
    for (spec, kind, tol) in [
        (ShardSpec::full(4), Kind::Float, 1e-5),
        (ShardSpec::full(4), Kind::BFloat16, 0.1),
        (ShardSpec::span(1, 3, 4).unwrap(), Kind::Float, 1e-5),
    ] {
        let model = shard(spec, kind);
        let first = (!spec.embed).then(|| shard(ShardSpec::span(0, 1, 4).unwrap(), kind));
        // The shard's input for `tokens`: the ids themselves, or the first layer's output.
        let input_of = |t: &Tensor| match &first {
            None => t.shallow_clone(),
            Some(f) => f.forward(ShardInput::Tokens(t), None).unwrap(),
        };
        let run = |x: &Tensor, cache: Option<&mut neuroshard_model::kv_cache::KvCache>| {
            let input = if spec.embed {
                ShardInput::Tokens(x)
            } else {
                ShardInput::Hidden(x)
            };
            model.forward(input, cache).unwrap()
        };
        let prefixes = [1, 7, 3, 12];
        let seqs: Vec<Tensor> = prefixes.iter().map(|&n| input_of(&tokens(n + 1))).collect();
        let (mut alone, mut batched) = (Vec::new(), Vec::new());
        let mut expected = Vec::new();
        for (seq, &n) in seqs.iter().zip(&prefixes) {
            let (mut a, mut b) = (model.new_cache(), model.new_cache());
            let _ = run(&seq.narrow(1, 0, n), Some(&mut a));
            let _ = run(&seq.narrow(1, 0, n), Some(&mut b));
            expected.push(run(&seq.narrow(1, n, 1), Some(&mut a)));
            alone.push(a);
            batched.push(b);
        }
        let rows: Vec<Tensor> = seqs
            .iter()
            .zip(&prefixes)
            .map(|(s, &n)| s.narrow(1, n, 1))
            .collect();
        let x = Tensor::cat(&rows, 0);
        let mut caches: Vec<&mut neuroshard_model::kv_cache::KvCache> =
            batched.iter_mut().collect();
        let input = if spec.embed {
            ShardInput::Tokens(&x)
        } else {
            ShardInput::Hidden(&x)
        };
        let out = model.forward_rows(input, &mut caches).unwrap();
        assert_eq!(out.size()[0], 4);
        for (b, want) in expected.iter().enumerate() {
            let got = out.narrow(0, b as i64, 1);
            assert!(max_diff(&got, want) < tol, "{spec:?} {kind:?} row {b}");
        }
        // The caches continue like the lone ones: one more position each, same next output.
        for (b, (a, c)) in alone.iter_mut().zip(batched.iter_mut()).enumerate() {
            assert_eq!(a.len(), c.len(), "row {b}");
            let next = seqs[b].narrow(1, prefixes[b], 1);
            assert!(
                max_diff(&run(&next, Some(c)), &run(&next, Some(a))) < tol,
                "{spec:?} {kind:?} row {b} after the batch"
            );
        }
    }
}

#[test]
fn a_decode_batch_that_does_not_fit_is_refused() {
    let model = shard(ShardSpec::full(4), Kind::Float);
    let (mut a, mut b) = (model.new_cache(), model.new_cache());
    let two_positions = tokens(4).view([2, 2]);
    let err = model
        .forward_rows(ShardInput::Tokens(&two_positions), &mut [&mut a, &mut b])
        .unwrap_err()
        .to_string();
    assert!(err.contains("one position per cache"), "{err}");
    let mut full = model.new_cache();
    let _ = model
        .forward(ShardInput::Tokens(&tokens(64)), Some(&mut full))
        .unwrap();
    let err = model
        .forward_rows(ShardInput::Tokens(&tokens(1)), &mut [&mut full])
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_seq_len"), "{err}");
}

#[test]
fn sharded_cache_decoding_equals_full_forward() {
    let full = shard(ShardSpec::full(4), Kind::Float);
    let input = tokens(9);
    let expected = full.forward(ShardInput::Tokens(&input), None).unwrap();
    let first = shard(ShardSpec::span(0, 2, 4).unwrap(), Kind::Float);
    let second = shard(ShardSpec::span(2, 4, 4).unwrap(), Kind::Float);
    let (mut c1, mut c2) = (first.new_cache(), second.new_cache());
    let mut rows = Vec::new();
    for t in 0..9 {
        let h = first
            .forward(ShardInput::Tokens(&input.narrow(1, t, 1)), Some(&mut c1))
            .unwrap();
        rows.push(
            second
                .forward(ShardInput::Hidden(&h), Some(&mut c2))
                .unwrap(),
        );
    }
    assert!(max_diff(&Tensor::cat(&rows, 1), &expected) < 1e-5);
}

#[test]
fn seeded_init_is_the_same_on_every_shard() {
    let full = shard(ShardSpec::full(4), Kind::Float);
    let part = shard(ShardSpec::span(2, 4, 4).unwrap(), Kind::Float);
    let full_vars = full.var_store().variables();
    for (name, value) in part.var_store().variables() {
        assert!(max_diff(&value, &full_vars[&name]) == 0.0, "{name}");
    }
    let mut other = Shard::new(&config(), ShardSpec::full(4), Device::Cpu, Kind::Float).unwrap();
    initialize(&mut other, 43).unwrap();
    let w = "model.layers.0.self_attn.q_proj.weight";
    assert!(max_diff(&other.var_store().variables()[w], &full_vars[w]) > 0.0);
}

#[test]
fn inputs_that_do_not_fit_the_shard_are_refused_by_name() {
    let first = shard(ShardSpec::span(0, 2, 4).unwrap(), Kind::Float);
    let second = shard(ShardSpec::span(2, 4, 4).unwrap(), Kind::Float);
    let err = |r: neuroshard_model::Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(second.forward(ShardInput::Tokens(&tokens(3)), None)).contains("no embedding"));
    let wrong_hidden = Tensor::zeros([1, 3, 32], (Kind::Float, Device::Cpu));
    assert!(err(second.forward(ShardInput::Hidden(&wrong_hidden), None)).contains("hidden: shape"));
    let wrong_dtype = Tensor::zeros([1, 3, 64], (Kind::Double, Device::Cpu));
    assert!(err(second.forward(ShardInput::Hidden(&wrong_dtype), None)).contains("dtype"));
    let out_of_vocab = Tensor::from_slice(&[1i64, 97]).view([1, 2]);
    assert!(err(first.forward(ShardInput::Tokens(&out_of_vocab), None)).contains("[0, 97)"));
    assert!(err(first.forward(ShardInput::Tokens(&tokens(65)), None)).contains("max_seq_len"));
    assert!(
        ShardSpec::span(3, 2, 4)
            .unwrap_err()
            .to_string()
            .contains("[3, 2)")
    );
    assert!(ShardSpec::span(0, 5, 4).is_err());
}

#[test]
fn depth_growth_preserves_the_function() {
    let full = shard(ShardSpec::full(4), Kind::Float);
    let input = tokens(8);
    let before = full.forward(ShardInput::Tokens(&input), None).unwrap();
    let grown = grow_depth(&full, 6, 7).unwrap();
    assert_eq!(grown.config().num_layers, 6);
    assert_eq!(grown.spec(), ShardSpec::full(6));
    let after = grown.forward(ShardInput::Tokens(&input), None).unwrap();
    assert_eq!(max_diff(&before, &after), 0.0);
    // The new layers are real, trainable layers: their input projections are not zero.
    let q = &grown.var_store().variables()["model.layers.5.self_attn.q_proj.weight"];
    assert!(q.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Growing a middle shard keeps its span; growing the last one extends it.
    let middle = shard(ShardSpec::span(1, 3, 4).unwrap(), Kind::Float);
    assert_eq!(
        grow_depth(&middle, 6, 7).unwrap().spec(),
        ShardSpec {
            start: 1,
            end: 3,
            embed: false,
            head: false
        }
    );
    let last = shard(ShardSpec::span(2, 4, 4).unwrap(), Kind::Float);
    assert_eq!(grow_depth(&last, 6, 7).unwrap().spec().end, 6);
    assert!(grow_depth(&full, 4, 7).is_err());
}

/// After growth, any cover of spans of the grown model, each built alone from the seed or from
/// a checkpoint of the base model, computes what the base model computed.
#[test]
fn spans_of_a_grown_model_built_alone_compute_the_base_function() {
    use neuroshard_model::growth::{Origin, build_grown_span};
    let base = shard(ShardSpec::full(4), Kind::Float);
    let input = tokens(9);
    let expected = base.forward(ShardInput::Tokens(&input), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    neuroshard_model::checkpoint::save(dir.path(), &base, None, 0).unwrap();
    let grown = ModelConfig {
        num_layers: 7,
        ..config()
    };
    for origin in [Origin::Seed, Origin::Checkpoint(dir.path())] {
        for cuts in [
            vec![0, 7],
            vec![0, 3, 5, 7],
            vec![0, 4, 6, 7],
            vec![0, 2, 4, 5, 7],
        ] {
            let parts: Vec<Shard> = cuts
                .windows(2)
                .map(|w| {
                    let spec = ShardSpec::span(w[0], w[1], 7).unwrap();
                    build_grown_span(&grown, spec, 4, origin, 42, Device::Cpu, Kind::Float).unwrap()
                })
                .collect();
            let mut x = parts[0].forward(ShardInput::Tokens(&input), None).unwrap();
            for part in &parts[1..] {
                x = part.forward(ShardInput::Hidden(&x), None).unwrap();
            }
            assert!(
                max_diff(&x, &expected) < 1e-6,
                "{origin:?} cuts {cuts:?}: {}",
                max_diff(&x, &expected)
            );
        }
    }
    // A grown layer is a real layer (input projections drawn), and replicas agree on it.
    let spec = ShardSpec::span(4, 6, 7).unwrap();
    let a = build_grown_span(&grown, spec, 4, Origin::Seed, 42, Device::Cpu, Kind::Float).unwrap();
    let b = build_grown_span(
        &grown,
        spec,
        4,
        Origin::Checkpoint(dir.path()),
        42,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let name = "model.layers.5.self_attn.q_proj.weight";
    let q = &a.var_store().variables()[name];
    assert!(q.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert_eq!(max_diff(q, &b.var_store().variables()[name]), 0.0);
    // A checkpoint that is not the base model is refused by name.
    let err = build_grown_span(
        &grown,
        spec,
        5,
        Origin::Checkpoint(dir.path()),
        42,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layers before growth"), "{err}");
    assert!(build_grown_span(&grown, spec, 8, Origin::Seed, 42, Device::Cpu, Kind::Float).is_err());
}
