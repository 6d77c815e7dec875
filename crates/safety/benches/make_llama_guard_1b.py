#!/usr/bin/env python3
"""Writes a random-weight model of Llama-Guard-3-1B's exact architecture for the Llama Guard
benchmark: Llama 3.2 1B (16 layers, hidden 2048, 32 query and 8 key/value heads of 64,
feed-forward 8192, 128,256 embedding rows, tied embeddings, llama3 rope scaling).

The tokenizer is the parity fixture's small byte-level BPE (the real one is not reachable
offline), so a text takes more tokens than with Llama 3's; the benchmark reports token counts.

    python3 crates/safety/benches/make_llama_guard_1b.py /tmp/lg1b
    cargo run --release -p passerelle-testkit -- convert-llama --hf-dir /tmp/lg1b \\
        --dtype q4_k --out /tmp/lg1b-q4_k.gguf
"""

import pathlib
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/tiny-llama-guard"


def main():
    out = pathlib.Path(sys.argv[1])
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FIXTURE / name, out / name)


if __name__ == "__main__":
    main()
