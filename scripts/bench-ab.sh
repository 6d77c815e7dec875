#!/usr/bin/env bash
# Two gateway builds compared on one mock upstream, their runs interleaved (A, B, A, B, ...) so
# that the machine's drift from minute to minute falls on both alike. Each run prints the
# build, its requests per second and the gateway's CPU time per request; the medians come last.
#
# Usage: scripts/bench-ab.sh BIN_A BIN_B [CONCURRENCY] [ROUNDS] [--stream]
# Environment knobs, with their defaults:
#   REQUESTS   20000   measured requests per run (after 500 unmeasured)
#   BASE_PORT  19090   mock on BASE_PORT, build A on +2, build B on +3
# Both gateways run with an API key and a (never reached) rate limit, as in
# scripts/bench-overhead.sh. Every process it starts is stopped by PID on exit.
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
bin_a=$1 bin_b=$2
concurrency=${3:-64}
rounds=${4:-8}
stream=${5:-}
requests=${REQUESTS:-20000}
base=${BASE_PORT:-19090}
key=sk-ab-$$

# shellcheck source=scripts/lib/processes.sh
source "$(dirname "$0")/lib/processes.sh"
processes_start bench-ab

"$bin_a" --log-filter warn bench mock-upstream --listen "127.0.0.1:$base" 2>"$tmp/mock.log" &
pids+=($!)
wait_port "$base"
declare -A gateway_pid gateway_port
for build in A B; do
    bin=$bin_a port=$((base + 2))
    [[ $build == B ]] && bin=$bin_b port=$((base + 3))
    PASSERELLE_API_KEYS=$key "$bin" --log-filter warn gateway --listen "127.0.0.1:$port" \
        --upstream "bench=http://127.0.0.1:$base/v1" --rate-limit-rpm 10000000 \
        --data-dir "$tmp/$build" 2>"$tmp/$build.log" &
    pids+=($!)
    gateway_pid[$build]=$! gateway_port[$build]=$port
    wait_port "$port"
done

for _ in $(seq "$rounds"); do
    for build in A B; do
        line=$("$bin_a" --log-filter warn bench --url "http://127.0.0.1:${gateway_port[$build]}/v1" \
            --model bench -n "$requests" --warmup 500 --concurrency "$concurrency" $stream \
            --api-key "$key" --pid "${gateway_pid[$build]}" --json)
        python3 -c 'import json,sys; r=json.loads(sys.argv[2]); print(sys.argv[1], round(r["requests_per_sec"]), r["cpu_us_per_request"])' "$build" "$line" | tee -a "$tmp/runs"
    done
done

python3 - "$tmp/runs" <<'EOF'
import statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    build, rps, cpu = line.split()
    runs[build].append((float(rps), float(cpu)))
for build, rows in runs.items():
    print(f"{build}: median {statistics.median(r for r, _ in rows):.0f} requests/s, "
          f"{statistics.median(c for _, c in rows):.1f} us CPU per request over {len(rows)} runs")
EOF
