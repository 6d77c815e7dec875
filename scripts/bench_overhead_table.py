#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench-overhead.sh into its markdown table and verdicts.

Each line is {"target": ..., "report": <passerelle bench --json>}. With several rounds, each
figure is the median over them.
"""

import json
import statistics
import sys

TARGETS = ["direct", "nginx", "passerelle", "litellm"]


def mode_of(report):
    return ("stream" if report["stream"] else "chat", report["concurrency"])


def mode_name(mode):
    kind, concurrency = mode
    return f"{'streaming' if kind == 'stream' else 'chat'}, c={concurrency}"


def main(path):
    runs = {}
    for line in open(path, encoding="utf-8"):
        entry = json.loads(line)
        report = entry["report"]
        runs.setdefault((mode_of(report), entry["target"]), []).append(report)

    def fig(mode, target, pick):
        reports = runs.get((mode, target))
        if not reports:
            return None
        return statistics.median(pick(r) for r in reports)

    p50 = lambda r: r["latency"]["p50_us"]
    p90 = lambda r: r["latency"]["p90_us"]
    p99 = lambda r: r["latency"]["p99_us"]
    ttfb = lambda r: (r["first_event"] or {}).get("p50_us", 0.0)
    rps = lambda r: r["requests_per_sec"]
    cpu = lambda r: r["cpu_us_per_request"]
    own = lambda r: r["own_cpu_us_per_request"]
    errors = lambda r: r["errors"]

    modes = sorted({mode for mode, _ in runs}, key=lambda m: (m[0] == "stream", m[1]))
    print(
        "| mode | path | requests/s | p50 µs | p90 µs | p99 µs | added p50 µs | "
        "first event p50 µs | proxy CPU µs/request | load tool CPU µs/request | errors |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in modes:
        base = fig(mode, "direct", p50)
        for target in TARGETS:
            if (mode, target) not in runs:
                continue
            added = "" if target == "direct" or base is None else f"{fig(mode, target, p50) - base:.0f}"
            first = f"{fig(mode, target, ttfb):.0f}" if mode[0] == "stream" else ""
            proxy_cpu = "(mock)" if target == "direct" else ""
            print(
                f"| {mode_name(mode)} | {target} | {fig(mode, target, rps):.0f} | "
                f"{fig(mode, target, p50):.0f} | {fig(mode, target, p90):.0f} | "
                f"{fig(mode, target, p99):.0f} | {added} | {first} | "
                f"{fig(mode, target, cpu):.1f}{' ' + proxy_cpu if proxy_cpu else ''} | "
                f"{fig(mode, target, own):.1f} | {fig(mode, target, errors):.0f} |"
            )

    print()
    print("Targets (Passerelle against nginx, added latency measured from the direct run):")
    print()
    for mode in modes:
        if (mode, "passerelle") not in runs or (mode, "nginx") not in runs:
            continue
        pick = ttfb if mode[0] == "stream" else p50
        what = "first-event p50" if mode[0] == "stream" else "p50"
        direct = fig(mode, "direct", pick)
        ours = fig(mode, "passerelle", pick) - direct
        theirs = fig(mode, "nginx", pick) - direct
        diff = ours - theirs
        ratio = fig(mode, "passerelle", rps) / fig(mode, "nginx", rps)
        cpu_ratio = fig(mode, "passerelle", cpu) / max(fig(mode, "nginx", cpu), 1e-9)
        verdict = lambda ok: "met" if ok else "MISSED"
        print(
            f"- {mode_name(mode)}: added {what} {ours:.0f} µs vs nginx {theirs:.0f} µs "
            f"(+{diff:.0f} µs, target ≤ 300: {verdict(diff <= 300)}); throughput "
            f"{100 * ratio:.0f}% of nginx (target ≥ 80%: {verdict(ratio >= 0.8)}); CPU per "
            f"request {cpu_ratio:.2f}x nginx (target ≤ 2x: {verdict(cpu_ratio <= 2)})"
        )


if __name__ == "__main__":
    main(sys.argv[1])
