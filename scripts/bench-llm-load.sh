#!/usr/bin/env bash
# Time to first token, inter-token latency and throughput of `passerelle serve` under load
# (issue 8): streamed chats of PROMPT_WORDS words (about 128 tokens in this model's tokenizer)
# and max_tokens MAX_TOKENS at each concurrency of CONCURRENCY, measured by
# `passerelle bench --stream`. Prints a markdown table, with the prompt's length in tokens as
# the server counted it (`/metrics`: the rendered chat template, and the part computed rather
# than reused from the prefix cache, which keeps the template's shared system prompt).
#
# The model is the random-weight Qwen2.5-0.5B architecture at Q4_K_M with its padding rows
# filled with synthetic words (`passerelle-testkit write-qwen2 --fill-vocab words`): with the
# usual `<|reserved_N|>` padding a random model samples almost only tokens that decode to
# nothing, so its streams carry no content and there is no first token to time. It is written
# once and reused.
#
# Needs: release builds of both binaries (cargo build --release -p passerelle-cli
# -p passerelle-testkit), curl and python3. Every process it starts is stopped by PID on exit.
# Environment knobs, with their defaults:
#   PASSERELLE_BIN  ${CARGO_TARGET_DIR:-target}/release/passerelle
#   TESTKIT_BIN     ${CARGO_TARGET_DIR:-target}/release/passerelle-testkit
#   MODEL           /tmp/passerelle-bench/qwen2.5-0.5b-q4_k_m-words.gguf (written if missing)
#   SEED            0       seed of the random weights when the model is written
#   THREADS         2       --threads of the server
#   MAX_RUNNING     8       --max-running: most streams decoding together
#   KV_CACHE_TOKENS 16384   --kv-cache-tokens (the default, context x max running, is 6 GiB)
#   CONCURRENCY     "1 4 8" the concurrencies measured, in order
#   REQUESTS        "16 32 32" measured requests at each concurrency (the last repeats)
#   WARMUP          0       unmeasured requests before each phase (0: one per connection)
#   PROMPT_WORDS    40      `bench --prompt-tokens`: common English words after a per-request
#                           tag; the testkit tokenizer (340 merges) splits each into about 2.7
#                           tokens, so 40 make a user message of about 128 tokens
#   MAX_TOKENS      64      --max-tokens
#   MAX_SECS        600     longest a measured phase runs
#   PORT            18180   where the server listens (127.0.0.1)
#   READY_SECS      300     longest to wait for the server to be ready
#   KEEP_JSON       (unset) a file to copy the raw `passerelle bench --json` lines to
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
bin=${PASSERELLE_BIN:-$target_dir/release/passerelle}
testkit=${TESTKIT_BIN:-$target_dir/release/passerelle-testkit}
model=${MODEL:-/tmp/passerelle-bench/qwen2.5-0.5b-q4_k_m-words.gguf}
seed=${SEED:-0}
threads=${THREADS:-2}
max_running=${MAX_RUNNING:-8}
kv_tokens=${KV_CACHE_TOKENS:-16384}
read -r -a concurrencies <<<"${CONCURRENCY:-1 4 8}"
read -r -a request_counts <<<"${REQUESTS:-16 32 32}"
warmup=${WARMUP:-0}
prompt_words=${PROMPT_WORDS:-40}
max_tokens=${MAX_TOKENS:-64}
max_secs=${MAX_SECS:-600}
port=${PORT:-18180}
ready_secs=${READY_SECS:-300}
key=sk-bench-$$

[[ -x $bin ]] || { echo "no passerelle binary at $bin (cargo build --release -p passerelle-cli)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 1; }
((${#concurrencies[@]} > 0 && ${#request_counts[@]} > 0)) || { echo "CONCURRENCY and REQUESTS must not be empty" >&2; exit 1; }

tmp=$(mktemp -d /tmp/bench-llm-load.XXXXXX)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the model ---------------------------------------------------------------------------
if [[ ! -f $model ]]; then
    [[ -x $testkit ]] || { echo "no passerelle-testkit binary at $testkit (cargo build --release -p passerelle-testkit)" >&2; exit 1; }
    mkdir -p "$(dirname "$model")"
    echo "writing $model (seed $seed)" >&2
    # Written beside the target and renamed, so an interrupted write leaves no partial model.
    "$testkit" write-qwen2 --preset qwen2.5-0.5b --format gguf --dtype q4_k_m \
        --fill-vocab words --seed "$seed" --out "$model.partial.gguf" >&2
    mv "$model.partial.gguf" "$model"
fi

# --- the server --------------------------------------------------------------------------
PASSERELLE_API_KEYS=$key "$bin" --log-filter warn serve \
    --model "$model" --model-id bench --offline \
    --listen "127.0.0.1:$port" --threads "$threads" \
    --max-running "$max_running" --kv-cache-tokens "$kv_tokens" \
    --no-safety --data-dir "$tmp/data" 2>"$tmp/serve.log" &
server_pid=$!

# Polls /health/ready until it answers 200, failing early if the server exits.
deadline=$((SECONDS + ready_secs))
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/ready" || true) == 200 ]]; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "passerelle serve exited before it was ready:" >&2
        tail -n 20 "$tmp/serve.log" >&2
        exit 1
    fi
    ((SECONDS < deadline)) || { echo "passerelle serve not ready after $ready_secs s" >&2; tail -n 20 "$tmp/serve.log" >&2; exit 1; }
    sleep 0.2
done

# --- the load ----------------------------------------------------------------------------
# The prompt counters of /metrics as a JSON object: rendered prompt tokens (the gateway's usage),
# tokens the engine computed, and requests the engine took.
counters() {
    curl -sf "http://127.0.0.1:$port/metrics" | awk '
        /^passerelle_prompt_tokens_total[{ ]/ { rendered += $NF }
        /^passerelle_llm_prompt_tokens_total[{ ]/ { computed += $NF }
        /^passerelle_llm_requests_total[{ ]/ { requests += $NF }
        END { printf "{\"rendered\": %d, \"computed\": %d, \"requests\": %d}", rendered, computed, requests }'
}

results=$tmp/results.jsonl
for i in "${!concurrencies[@]}"; do
    c=${concurrencies[$i]}
    n=${request_counts[$i]:-${request_counts[-1]}}
    w=$warmup
    ((w > 0)) || w=$c
    echo "concurrency $c: $n requests after $w unmeasured" >&2
    before=$(counters)
    PASSERELLE_BENCH_API_KEY=$key "$bin" --log-filter warn bench \
        --url "http://127.0.0.1:$port/v1" --model bench --stream \
        --concurrency "$c" -n "$n" --warmup "$w" --max-secs "$max_secs" \
        --prompt-tokens "$prompt_words" --max-tokens "$max_tokens" \
        --pid "$server_pid" --json >"$tmp/report.json"
    after=$(counters)
    # One JSON line per phase: the bench report and the server's prompt counters over it
    # (warm-up included, as the counters cannot tell it apart).
    printf '{"report": %s, "counters_before": %s, "counters_after": %s}\n' \
        "$(cat "$tmp/report.json")" "$before" "$after" >>"$results"
done
[[ -z ${KEEP_JSON:-} ]] || cp "$results" "$KEEP_JSON"

echo "passerelle serve, $(basename "$model"), $threads threads, max_running $max_running;" \
    "streamed chats, prompt of $prompt_words words after a per-request tag, max_tokens $max_tokens"
echo
python3 "$here/scripts/bench_llm_load_table.py" "$results"
