"""Loads a NeuroShard checkpoint with Hugging Face transformers and prints its logits.

Usage: hf_logits.py CHECKPOINT_DIR 1,2,3
Prints {"logits": [[...], ...]} (one row per input position, float32), the same shape that
`neuroshard model logits` prints, so the two can be compared.
"""

import json
import sys

import torch
from transformers import LlamaForCausalLM


def main() -> None:
    checkpoint, tokens = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    json.dump({"logits": logits.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
