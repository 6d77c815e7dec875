#!/usr/bin/env bash
# passerelle-llm against llama.cpp on the same GGUF file, same thread count, one run: a
# random-weight Qwen2.5-0.5B-Instruct-architecture model in llama.cpp's Q4_K_M mix (written by
# `passerelle-testkit write-qwen2 --dtype q4_k_m`, the tensor types `llama-quantize` picks).
# Measures what llama-bench measures: prompt processing of 512 tokens (`-p 512 -n 0`), decode
# of 128 tokens after a 512-token context (`-p 0 -n 128 -d 512`), and peak resident memory;
# plus llama.cpp's aggregate decode over 8 concurrent streams (llama-batched-bench). Prints a
# markdown table with the ratios.
#
# Needs llama.cpp's llama-bench and llama-batched-bench (cmake -DLLAMA_CURL=OFF
# -DGGML_NATIVE=ON, see docs/benchmarks.md), python3 and GNU time (/usr/bin/time).
# Environment knobs, with their defaults:
#   LLAMA_CPP_BIN  /work/llama.cpp-build/bin   directory holding llama-bench
#   THREADS        2
#   REPS           3       repetitions of each test (llama-bench -r, bench_engine --reps)
#   STREAMS        8       parallel sequences for llama-batched-bench (0 skips it)
#   DTYPE          q4_k_m  testkit weight type of the file (q8_0 compares another kernel set)
#   MODEL          /tmp/passerelle-bench/qwen2.5-0.5b-$DTYPE.gguf   written when missing
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
llama_bin=${LLAMA_CPP_BIN:-/work/llama.cpp-build/bin}
threads=${THREADS:-2}
reps=${REPS:-3}
streams=${STREAMS:-8}
dtype=${DTYPE:-q4_k_m}
model=${MODEL:-/tmp/passerelle-bench/qwen2.5-0.5b-$dtype.gguf}

[[ -x $llama_bin/llama-bench ]] || { echo "no llama-bench in $llama_bin (set LLAMA_CPP_BIN)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "GNU time is not installed (/usr/bin/time)" >&2; exit 1; }

echo "building passerelle-testkit and the bench_engine example (release)" >&2
(cd "$here" && cargo build --release --quiet -p passerelle-testkit --bin passerelle-testkit \
    && cargo build --release --quiet -p passerelle-llm --example bench_engine)

if [[ ! -f $model ]]; then
    mkdir -p "$(dirname "$model")"
    "$target/release/passerelle-testkit" write-qwen2 --preset qwen2.5-0.5b --format gguf \
        --dtype "$dtype" --seed 0 --out "$model" >&2
fi

tmp=$(mktemp -d /tmp/bench-vs-llamacpp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Each tool runs alone, one after the other; GNU time records its peak resident memory (KiB).
echo "llama-bench: pp512" >&2
/usr/bin/time -f %M -o "$tmp/llama_pp.rss" "$llama_bin/llama-bench" -m "$model" -t "$threads" \
    -r "$reps" -p 512 -n 0 -o json > "$tmp/llama_pp.json" 2> "$tmp/llama_pp.log"
echo "llama-bench: tg128 at depth 512" >&2
/usr/bin/time -f %M -o "$tmp/llama_tg.rss" "$llama_bin/llama-bench" -m "$model" -t "$threads" \
    -r "$reps" -p 0 -n 128 -d 512 -o json > "$tmp/llama_tg.json" 2> "$tmp/llama_tg.log"
if (( streams > 0 )); then
    echo "llama-batched-bench: $streams streams, 512 + 128 tokens each" >&2
    "$llama_bin/llama-batched-bench" -m "$model" -t "$threads" -tb "$threads" \
        -c $(( streams * 640 )) -b 2048 -ub 512 -npp 512 -ntg 128 -npl "$streams" \
        --output-format jsonl > "$tmp/llama_batched.jsonl" 2> "$tmp/llama_batched.log"
fi
echo "passerelle-llm bench_engine" >&2
/usr/bin/time -f %M -o "$tmp/ours.rss" "$target/release/examples/bench_engine" "$model" \
    --threads "$threads" --reps "$reps" --json > "$tmp/ours.json" 2> "$tmp/ours.log"
if (( streams > 0 )); then
    # Its own process, so that the single-stream peak memory above stays comparable.
    echo "passerelle-llm bench_engine: $streams streams, 512 + 128 tokens each" >&2
    "$target/release/examples/bench_engine" "$model" --threads "$threads" --reps "$reps" \
        --streams "$streams" --json > "$tmp/ours_batched.json" 2> "$tmp/ours_batched.log"
fi

python3 "$here/scripts/bench_vs_llamacpp_table.py" "$tmp" "$model" "$threads"
