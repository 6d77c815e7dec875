#!/usr/bin/env bash
# The gateway's own overhead, measured in one run against a fast mock upstream on loopback:
# direct to the mock, through a plain nginx proxy hop, through Passerelle (API key auth and a
# rate limit on), and through LiteLLM's proxy, for non-streaming chat at concurrency 1, 16
# and 64 and for streaming time to first event. Prints a markdown table and the verdict on the
# targets of docs/benchmarks.md.
#
# Needs: a release build (cargo build --release -p passerelle-cli; for the figures of the shipped
# build, scripts/build-pgo.sh and PASSERELLE_BIN=target/pgo/optimized/dist/passerelle; the mock
# and the load tool are that binary too), nginx (Debian package),
# python3, and optionally LiteLLM (`pip install 'litellm[proxy]'`; set LITELLM to its
# `litellm` executable; skipped when absent). Every process it starts is stopped by PID on
# exit. Environment knobs, with their defaults:
#   PASSERELLE_BIN   ${CARGO_TARGET_DIR:-target}/release/passerelle
#   LITELLM          litellm (on PATH)
#   REQUESTS         100000  measured requests per phase (nginx, Passerelle, direct)
#   LITELLM_REQUESTS 1000    measured requests per phase for LiteLLM
#   WARMUP           500     unmeasured requests before each phase
#   MAX_SECS         20      longest a measured phase runs
#   ROUNDS           5       repeat every phase this many times; the table keeps the median
#   BASE_PORT        18090   mock on BASE_PORT, nginx +1, Passerelle +2, LiteLLM +3
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PASSERELLE_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/passerelle}
litellm=${LITELLM:-litellm}
requests=${REQUESTS:-100000}
litellm_requests=${LITELLM_REQUESTS:-1000}
warmup=${WARMUP:-500}
max_secs=${MAX_SECS:-20}
rounds=${ROUNDS:-5}
base=${BASE_PORT:-18090}
mock_port=$base nginx_port=$((base + 1)) gateway_port=$((base + 2)) litellm_port=$((base + 3))
key=sk-bench-$$
litellm_key=sk-litellm-$$

[[ -x $bin ]] || { echo "no passerelle binary at $bin (cargo build --release -p passerelle-cli)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

# shellcheck source=scripts/lib/processes.sh
source "$(dirname "$0")/lib/processes.sh"
processes_start bench-overhead

# --- the mock upstream -------------------------------------------------------------------
"$bin" --log-filter warn bench mock-upstream --listen "127.0.0.1:$mock_port" 2>"$tmp/mock.log" &
mock_pid=$!; pids+=("$mock_pid")
wait_port "$mock_port" 30

# --- nginx: one proxy hop, keep-alive to the upstream, no buffering (as for SSE) ----------
mkdir -p "$tmp/nginx/logs"
user_line=""
[[ $(id -u) == 0 ]] && user_line="user $(id -un) $(id -gn);"
cat >"$tmp/nginx/nginx.conf" <<EOF
$user_line
worker_processes auto;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    upstream mock {
        server 127.0.0.1:$mock_port;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/logs/error.log" -g 'daemon off;' &
nginx_pid=$!; pids+=("$nginx_pid")
wait_port "$nginx_port" 30

# --- Passerelle: API key auth and a (never reached) rate limit on -------------------------
PASSERELLE_API_KEYS=$key "$bin" --log-filter warn gateway \
    --listen "127.0.0.1:$gateway_port" \
    --upstream "bench=http://127.0.0.1:$mock_port/v1" \
    --rate-limit-rpm 10000000 \
    --data-dir "$tmp/passerelle" 2>"$tmp/passerelle.log" &
gateway_pid=$!; pids+=("$gateway_pid")
wait_port "$gateway_port" 30

# --- LiteLLM's proxy, when installed ----------------------------------------------------
litellm_pid=""
if command -v "$litellm" >/dev/null; then
    cat >"$tmp/litellm.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params:
      model: openai/mock
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: unused
general_settings:
  master_key: $litellm_key
litellm_settings:
  telemetry: false
EOF
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
        "$litellm" --config "$tmp/litellm.yaml" --host 127.0.0.1 --port "$litellm_port" \
        --num_workers 1 >"$tmp/litellm.log" 2>&1 &
    litellm_pid=$!; pids+=("$litellm_pid")
    if ! wait_port "$litellm_port" 120; then
        echo "LiteLLM did not start; its log:" >&2; tail -20 "$tmp/litellm.log" >&2
        litellm_pid=""
    fi
else
    echo "LiteLLM not found ($litellm); its rows are skipped" >&2
fi

# --- the phases ---------------------------------------------------------------------------
results=$tmp/results.jsonl
# phase LABEL URL KEY PID REQUESTS MODE_ARGS...
phase() {
    local label=$1 url=$2 api_key=$3 pid=$4 n=$5; shift 5
    local line
    line=$("$bin" --log-filter warn bench --url "$url" --model bench -n "$n" --warmup "$warmup" \
        --max-secs "$max_secs" --pid "$pid" --json "$@" \
        ${api_key:+--api-key "$api_key"})
    echo "{\"target\": \"$label\", \"report\": $line}" >>"$results"
    echo "  $label $*: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f req/s, p50 %.0f us, %d errors" % (r["requests_per_sec"], r["latency"]["p50_us"], r["errors"]))' "$line")" >&2
}

modes=("--concurrency 1" "--concurrency 16" "--concurrency 64" "--concurrency 1 --stream")
for round in $(seq "$rounds"); do
    for mode in "${modes[@]}"; do
        # shellcheck disable=SC2086 # the mode is several words on purpose
        {
            phase direct "http://127.0.0.1:$mock_port/v1" "" "$mock_pid" "$requests" $mode
            phase nginx "http://127.0.0.1:$nginx_port/v1" "" "$nginx_pid" "$requests" $mode
            phase passerelle "http://127.0.0.1:$gateway_port/v1" "$key" "$gateway_pid" "$requests" $mode
            if [[ -n $litellm_pid ]]; then
                phase litellm "http://127.0.0.1:$litellm_port/v1" "$litellm_key" "$litellm_pid" "$litellm_requests" $mode
            fi
        }
    done
    echo "round $round of $rounds done" >&2
done

python3 "$here/scripts/bench_overhead_table.py" "$results"
