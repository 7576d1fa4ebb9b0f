//! Each layer against a directly written reference formula (plain loops in f64).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
#![allow(clippy::needless_range_loop)] // reference formulas read as the index math they encode

use neuroshard_model::ModelConfig;
use neuroshard_model::attention::Attention;
use neuroshard_model::mlp::Mlp;
use neuroshard_model::norm::RmsNorm;
use neuroshard_model::rope::Rope;
use neuroshard_model::tch::{Device, Kind, Tensor, nn};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn random(shape: &[i64], seed: i64) -> Tensor {
    neuroshard_model::tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn fill(var: &Tensor, seed: i64, scale: f64) {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let mut var = var.shallow_clone();
    var.copy_(&(random(&var.size(), seed) * scale));
}

fn assert_close(ours: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(ours.len(), reference.len());
    let worst = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= tol, "max abs diff {worst} > {tol}");
}

/// y[i] = sum_j w[i][j] x[j]; w is [out, in] row-major.
fn matvec(w: &[f64], x: &[f64], out: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out)
        .map(|i| (0..inp).map(|j| w[i * inp + j] * x[j]).sum())
        .collect()
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 48,
        rope_theta: 10_000.0,
        rms_eps: 1e-6,
        max_seq_len: 64,
    }
}

#[test]
fn rms_norm_matches_formula() {
    let vs = nn::VarStore::new(Device::Cpu);
    let norm = RmsNorm::new(vs.root() / "norm", 16, 1e-6);
    fill(&norm.weight, 1, 1.0);
    let x = random(&[3, 16], 2) * 3.0;
    let ours = values(&norm.forward(&x));
    let (xs, w) = (values(&x), values(&norm.weight));
    let mut reference = Vec::new();
    for row in xs.chunks(16) {
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / 16.0 + 1e-6).sqrt();
        reference.extend(row.iter().zip(&w).map(|(v, g)| g * v / rms));
    }
    assert_close(&ours, &reference, 1e-5);
}

/// Rotates one head vector at `pos` the Llama way (pairs i and i + d/2).
fn rope_reference(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut y = vec![0.0; d];
    for i in 0..d / 2 {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = angle.sin_cos();
        y[i] = x[i] * c - x[i + d / 2] * s;
        y[i + d / 2] = x[i + d / 2] * c + x[i] * s;
    }
    y
}

#[test]
fn rope_matches_formula_at_offsets() {
    let rope = Rope::new(8, 64, 10_000.0, Device::Cpu);
    let x = random(&[1, 2, 5, 8], 3);
    for offset in [0usize, 7] {
        let ours = values(&rope.apply(&x, offset as i64));
        let xs = values(&x);
        let mut reference = Vec::new();
        for head in xs.chunks(5 * 8) {
            for (p, v) in head.chunks(8).enumerate() {
                reference.extend(rope_reference(v, offset + p, 10_000.0));
            }
        }
        assert_close(&ours, &reference, 1e-5);
    }
}

#[test]
fn rope_preserves_norm_and_relative_position() {
    let rope = Rope::new(8, 64, 10_000.0, Device::Cpu);
    let q = random(&[1, 1, 1, 8], 4);
    let k = random(&[1, 1, 1, 8], 5);
    let dot = |a: i64, b: i64| {
        (rope.apply(&q, a) * rope.apply(&k, b))
            .sum(Kind::Float)
            .double_value(&[])
    };
    // <R_a q, R_b k> depends only on a - b.
    assert!((dot(3, 1) - dot(10, 8)).abs() < 1e-5);
    let norm = |t: &Tensor| t.square().sum(Kind::Float).double_value(&[]);
    assert!((norm(&rope.apply(&q, 9)) - norm(&q)).abs() < 1e-5);
}

#[test]
fn grouped_query_attention_matches_formula() {
    let c = config();
    let vs = nn::VarStore::new(Device::Cpu);
    let attn = Attention::new(vs.root() / "attn", &c);
    for (i, w) in [&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.o_proj]
        .into_iter()
        .enumerate()
    {
        fill(w, 10 + i as i64, 0.2);
    }
    let rope = Rope::new(c.head_dim(), c.max_seq_len, c.rope_theta, Device::Cpu);
    let (seq, hidden, hd) = (6usize, c.hidden_size as usize, c.head_dim() as usize);
    let (heads, kv_heads) = (c.num_heads as usize, c.num_kv_heads as usize);
    let x = random(&[1, seq as i64, hidden as i64], 20);
    let ours = values(&attn.forward(&x, &rope, 0, None));

    let xs = values(&x);
    let (wq, wk, wv, wo) = (
        values(&attn.q_proj),
        values(&attn.k_proj),
        values(&attn.v_proj),
        values(&attn.o_proj),
    );
    let rows: Vec<&[f64]> = xs.chunks(hidden).collect();
    let q: Vec<Vec<f64>> = rows.iter().map(|r| matvec(&wq, r, heads * hd)).collect();
    let k: Vec<Vec<f64>> = rows.iter().map(|r| matvec(&wk, r, kv_heads * hd)).collect();
    let v: Vec<Vec<f64>> = rows.iter().map(|r| matvec(&wv, r, kv_heads * hd)).collect();
    let mut reference = Vec::new();
    for t in 0..seq {
        let mut concat = vec![0.0; heads * hd];
        for h in 0..heads {
            let g = h / (heads / kv_heads); // the kv head this query head shares
            let qh = rope_reference(&q[t][h * hd..(h + 1) * hd], t, c.rope_theta);
            let scores: Vec<f64> = (0..=t)
                .map(|s| {
                    let ks = rope_reference(&k[s][g * hd..(g + 1) * hd], s, c.rope_theta);
                    qh.iter().zip(&ks).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for (s, e) in exps.iter().enumerate() {
                for d in 0..hd {
                    concat[h * hd + d] += e / total * v[s][g * hd + d];
                }
            }
        }
        reference.extend(matvec(&wo, &concat, hidden));
    }
    assert_close(&ours, &reference, 1e-4);
}

#[test]
fn swiglu_matches_formula() {
    let c = config();
    let vs = nn::VarStore::new(Device::Cpu);
    let mlp = Mlp::new(vs.root() / "mlp", &c);
    fill(&mlp.gate_proj, 30, 0.3);
    fill(&mlp.up_proj, 31, 0.3);
    fill(&mlp.down_proj, 32, 0.3);
    let x = random(&[2, 32], 33);
    let ours = values(&mlp.forward(&x));
    let (g, u, d) = (
        values(&mlp.gate_proj),
        values(&mlp.up_proj),
        values(&mlp.down_proj),
    );
    let mut reference = Vec::new();
    for row in values(&x).chunks(32) {
        let gate = matvec(&g, row, 48);
        let up = matvec(&u, row, 48);
        let act: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
            .collect();
        reference.extend(matvec(&d, &act, 32));
    }
    assert_close(&ours, &reference, 1e-4);
}
