"""Time per training step: NeuroShard (tch) vs the same architecture in PyTorch eager.

Both sides use the same config, thread count, batch, token ids' distribution, and the same
step: forward, mean cross-entropy, backward, grad-norm clip 1.0, AdamW (betas 0.9/0.95,
weight decay 0.1). The PyTorch side is transformers' LlamaForCausalLM with SDPA attention,
the reference implementation of this architecture. Rounds alternate between the two so drift
in machine load hits both; the ratio of medians is reported.

Usage: bench_train_step.py NEUROSHARD_BIN [--rounds R] [--threads T] [model flags...]
"""

import argparse
import json
import statistics
import subprocess
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def pytorch_step_times(cfg: dict, steps: int, warmup: int) -> list:
    config = LlamaConfig(
        vocab_size=cfg["vocab"],
        hidden_size=cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["kv_heads"],
        intermediate_size=cfg["intermediate"],
        max_position_embeddings=cfg["seq_len"] + 1,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    tokens = torch.randint(0, cfg["vocab"], (cfg["batch_size"], cfg["seq_len"] + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg["vocab"]), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("kv-heads", 2), ("intermediate", 688),
                          ("vocab", 4096), ("batch-size", 16), ("seq-len", 128)]:
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    cfg = {k: getattr(a, k) for k in ["layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "batch_size", "seq_len"]}
    torch.set_num_threads(a.threads)
    ours, theirs = [], []
    for _ in range(a.rounds):
        cmd = [a.binary, "bench", "train-step", "--threads", str(a.threads), "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--device", "cpu"]
        for k, v in cfg.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ours.append(result["median_ms"])
        theirs.append(statistics.median(pytorch_step_times(cfg, a.steps, a.warmup)))
    report = {
        "config": cfg,
        "threads": a.threads,
        "torch": torch.__version__,
        "neuroshard_ms_per_step": statistics.median(ours),
        "pytorch_eager_ms_per_step": statistics.median(theirs),
        "ratio_neuroshard_over_pytorch": statistics.median(ours) / statistics.median(theirs),
        "rounds": {"neuroshard": ours, "pytorch": theirs},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
