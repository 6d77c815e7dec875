#!/usr/bin/env bash
# End-to-end check with the official `openai` Python client: writes a random-weight Qwen2 GGUF,
# starts `passerelle serve` on a loopback port, runs scripts/openai_client_check.py against it,
# checks a wrong key with curl, and stops the server it started.
# Needs: cargo, python3 with `openai` installed, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -q -p passerelle-cli -p passerelle-testkit
bin=target/debug
work=$(mktemp -d)
"$bin/passerelle-testkit" write-qwen2 --preset tiny --format gguf --dtype q8_0 --seed 7 --out "$work/tiny-q8_0.gguf"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

"$bin/passerelle" serve --model "$work/tiny-q8_0.gguf" --model-id tiny --listen "127.0.0.1:$port" \
  --api-keys psk-e2e-check --data-dir "$work/data" --offline &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 1 600); do
  if curl -fsS "$base/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "passerelle exited before it was ready" >&2; exit 1; fi
  sleep 0.1
done
curl -fsS "$base/health/ready" >/dev/null

python3 scripts/openai_client_check.py "$base" psk-e2e-check tiny

status=$(curl -s -o "$work/401.json" -w '%{http_code}' -H 'Authorization: Bearer nope' "$base/v1/models")
[ "$status" = 401 ] || { echo "wrong key got $status" >&2; exit 1; }
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert e["message"] and "type" in e and "code" in e and "param" in e, e' "$work/401.json"
echo "curl wrong key: 401 in OpenAI's error shape"
