#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench-llm-load.sh into its markdown table: one row per
concurrency, in the order run.

Each line is {"report": <passerelle bench --stream --json>, "counters_before": ...,
"counters_after": ...}, the counters being the server's prompt tokens rendered and computed and
the engine's requests, read from /metrics around the phase (its warm-up included).

Times are in milliseconds. Aggregate tokens/s is the completion tokens of every answer over the
phase's wall time; per-stream tokens/s is each stream's tokens after the first over the time
from its first content event to its last (p50, and p10: the slow tail).
"""

import json
import sys


def ms(percentiles, key):
    return f"{percentiles[key] / 1000:.0f}" if percentiles and percentiles.get("count") else "-"


def errors(report):
    counts = [f"{n} x HTTP {status}" for status, n in sorted(report["errors_by_status"].items())]
    counts += [f"{n} x {kind}" for kind, n in sorted(report["errors_by_transport"].items())]
    return ", ".join(counts) if counts else "0"


def prompt_tokens(entry):
    """Rendered prompt tokens per request, and of those the ones computed (not from the prefix
    cache), from the counters around the phase."""
    before, after = entry.get("counters_before"), entry.get("counters_after")
    if not before or not after:
        return "-"
    requests = after["requests"] - before["requests"]
    if requests <= 0:
        return "-"
    rendered = (after["rendered"] - before["rendered"]) / requests
    computed = (after["computed"] - before["computed"]) / requests
    return f"{rendered:.0f} ({computed:.0f})"


def main(path):
    entries = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    print(
        "| concurrency | requests ok | prompt tokens (computed) | TTFT p50 ms | TTFT p90 ms | "
        "TTFT p99 ms | ITL p50 ms | ITL p90 ms | ITL p99 ms | tokens/answer | "
        "aggregate tokens/s | per-stream tokens/s p50 (p10) | errors |"
    )
    print(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |"
    )
    for entry in entries:
        r = entry["report"]
        ttft, itl = r.get("ttft"), r.get("itl")
        rate = r.get("tokens_per_sec")
        per_stream = r.get("stream_tokens_per_sec") or {}
        stream_rate = (
            f"{per_stream['p50']:.1f} ({per_stream['p10']:.1f})" if per_stream.get("count") else "-"
        )
        per_answer = (
            f"{r['completion_tokens'] / r['answers_with_tokens']:.1f}"
            if r["answers_with_tokens"]
            else "-"
        )
        print(
            f"| {r['concurrency']} | {r['ok']} of {r['ok'] + r['errors']} | {prompt_tokens(entry)} | "
            f"{ms(ttft, 'p50_us')} | {ms(ttft, 'p90_us')} | {ms(ttft, 'p99_us')} | "
            f"{ms(itl, 'p50_us')} | {ms(itl, 'p90_us')} | {ms(itl, 'p99_us')} | {per_answer} | "
            f"{f'{rate:.1f}' if rate is not None else '-'} | {stream_rate} | {errors(r)} |"
        )
    reports = [entry["report"] for entry in entries]
    missing = [r["concurrency"] for r in reports if r["ok"] and not (r.get("ttft") or {}).get("count")]
    if missing:
        print()
        print(f"No content events at concurrency {missing}: the model's tokens decode to nothing.")


if __name__ == "__main__":
    main(sys.argv[1])
