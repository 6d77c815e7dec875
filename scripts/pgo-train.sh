#!/usr/bin/env bash
# The training run of scripts/build-pgo.sh, on the passerelle binary given: `passerelle
# gateway` with an API key and a per-key rate limit, in front of `passerelle bench
# mock-upstream`, driven by `passerelle bench` with plain chat at concurrency 1, 16 and 64 and
# streamed chat at 1 and 16. Fails unless every request was answered and the gateway shut down
# cleanly (an instrumented binary writes its profile on a normal exit). CI runs it on the debug
# build to keep it working. Everything binds to 127.0.0.1 and is stopped by PID.
# Usage: scripts/pgo-train.sh BINARY. Environment knobs, with their defaults:
#   TRAIN_SECS   4      longest each phase runs
#   BASE_PORT    18490  mock on BASE_PORT, gateway on BASE_PORT + 1
set -euo pipefail

bin=${1:?usage: scripts/pgo-train.sh BINARY}
train_secs=${TRAIN_SECS:-4}
base=${BASE_PORT:-18490}
mock_port=$base gateway_port=$((base + 1))

# shellcheck source=scripts/lib/processes.sh
source "$(dirname "$0")/lib/processes.sh"
processes_start passerelle-pgo-train

"$bin" --log-filter warn bench mock-upstream --listen "127.0.0.1:$mock_port" 2>"$tmp/mock.log" &
pids+=($!)
wait_port "$mock_port"
key=sk-pgo-$$
PASSERELLE_API_KEYS=$key "$bin" --log-filter warn gateway \
    --listen "127.0.0.1:$gateway_port" \
    --upstream "train=http://127.0.0.1:$mock_port/v1" \
    --rate-limit-rpm 100000000 \
    --data-dir "$tmp/data" 2>"$tmp/gateway.log" &
gateway_pid=$!
pids+=("$gateway_pid")
wait_port "$gateway_port"

phase() {
    "$bin" --log-filter warn bench --url "http://127.0.0.1:$gateway_port/v1" --model train \
        --api-key "$key" -n 200000 --warmup 100 --max-secs "$train_secs" "$@" --json \
        >"$tmp/phase.json"
    if ! grep -q '"errors":0[,}]' "$tmp/phase.json" || grep -q '"ok":0[,}]' "$tmp/phase.json"; then
        echo "training phase $* failed: $(cat "$tmp/phase.json")" >&2
        exit 1
    fi
    echo "trained: $*" >&2
}
phase --concurrency 1
phase --concurrency 16
phase --concurrency 64
phase --concurrency 1 --stream
phase --concurrency 16 --stream

# SIGTERM is the gateway's graceful shutdown: it exits normally.
kill -TERM "$gateway_pid"
if ! wait "$gateway_pid"; then
    echo "the gateway did not shut down cleanly; its log:" >&2
    tail -20 "$tmp/gateway.log" >&2
    exit 1
fi
