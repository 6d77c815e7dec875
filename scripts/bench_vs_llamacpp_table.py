#!/usr/bin/env python3
"""Prints the markdown table of scripts/bench-vs-llamacpp.sh from the files it wrote.

    bench_vs_llamacpp_table.py RESULTS_DIR MODEL THREADS
"""

import json
import pathlib
import platform
import sys


def llama_bench(path):
    """The one result of a `llama-bench -o json` run."""
    (result,) = json.loads(path.read_text())
    return result


def batched(directory):
    """llama-batched-bench's jsonl line, from stdout or its log, or None when it did not run."""
    for name in ("llama_batched.jsonl", "llama_batched.log"):
        path = directory / name
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("{") and "speed_tg" in line:
                    return json.loads(line)
    return None


def rss_mib(path):
    return int(path.read_text().split()[-1]) / 1024


def cpu_name():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    directory, model, threads = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    pp, tg = llama_bench(directory / "llama_pp.json"), llama_bench(directory / "llama_tg.json")
    ours = json.loads((directory / "ours.json").read_text())
    multi = batched(directory)
    llama_rss = max(rss_mib(directory / "llama_pp.rss"), rss_mib(directory / "llama_tg.rss"))
    ours_rss = rss_mib(directory / "ours.rss")

    def row(name, theirs, theirs_std, mine, mine_std, unit="tokens/s"):
        ratio = f"{mine / theirs:.2f}x" if theirs and mine else "n/a"
        fmt = lambda v, s: "n/a" if v is None else (f"{v:.2f} ± {s:.2f}" if s is not None else f"{v:.1f}")
        return f"| {name} | {unit} | {fmt(theirs, theirs_std)} | {fmt(mine, mine_std)} | {ratio} |"

    print(f"model: `{model}` ({pathlib.Path(model).stat().st_size / 2**20:.0f} MiB, "
          f"{pp.get('model_type', 'qwen2')}), {threads} threads, CPU: {cpu_name()}")
    print(f"llama.cpp: build {pp.get('build_commit')} ({pp.get('build_number')}), "
          f"KV cache {pp.get('type_k')}/{pp.get('type_v')}, flash attention {pp.get('flash_attn')}, "
          f"{pp.get('n_batch')}/{pp.get('n_ubatch')} batch/ubatch, {len(pp.get('samples_ts', []))} reps")
    print(f"passerelle-llm: bench_engine through the engine API, {ours['reps']} reps, "
          f"loaded in {ours['load_s']:.1f} s")
    print()
    print("| test | unit | llama.cpp | passerelle-llm | passerelle / llama.cpp |")
    print("| --- | --- | ---: | ---: | ---: |")
    print(row("pp512", pp["avg_ts"], pp["stddev_ts"], ours["pp"]["tokens_per_s"], ours["pp"]["std"]))
    print(row("tg128 @ d512", tg["avg_ts"], tg["stddev_ts"], ours["tg"]["tokens_per_s"], ours["tg"]["std"]))
    ours_multi_path = directory / "ours_batched.json"
    ours_multi = (json.loads(ours_multi_path.read_text()).get("aggregate_tg")
                  if ours_multi_path.exists() else None)
    if multi or ours_multi:
        streams = multi["pl"] if multi else json.loads(ours_multi_path.read_text())["streams"]
        print(row(f"aggregate decode, {streams} streams (512 + 128 each)",
                  multi["speed_tg"] if multi else None, None,
                  ours_multi["tokens_per_s"] if ours_multi else None,
                  ours_multi["std"] if ours_multi else None))
    # Lower is better for memory, so the ratio still reads as ours over theirs.
    print(row("peak RSS", llama_rss, None, ours_rss, None, unit="MiB"))
    if ours_multi:
        print()
        print(f"passerelle-llm aggregate over single-stream decode: "
              f"{ours_multi['tokens_per_s'] / ours['tg']['tokens_per_s']:.2f}x (target 3x)")


if __name__ == "__main__":
    main()
