#!/usr/bin/env bash
# Deployment checks that need no Docker engine (run by .ci/run after the Rust tests):
#   1. compose.yml against the compose spec, deploy/k8s against Kubernetes' schemas;
#   2. deployment files against the code (flags, variables, metric names, healthchecks, probes);
#   3. the image entrypoint's secret handling, with a stand-in binary;
#   4. nginx -t on the shipped config, then real nginx (TLS) in front of `passerelle serve`:
#      streamed chat without buffering, redirects, ACME, limits, headers, and an sslyze scan.
# Needs: nginx (Debian package), python3 with sslyze, check-jsonschema and kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --locked -q -p passerelle-cli -p passerelle-testkit
bin="${CARGO_TARGET_DIR:-target}/debug"

echo "== compose.yml: compose-spec schema"
python3 -m check_jsonschema --builtin-schema vendor.compose-spec compose.yml
echo "== deploy/k8s: Kubernetes schemas (strict)"
python3 -m kubernetes_validate --strict --quiet $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)

echo "== deployment files against the code"
python3 deploy/test/check_manifests.py --passerelle "$bin/passerelle"

echo "== image entrypoint: secret files"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '#!/bin/sh\necho "args: $*"; env | grep -E "^(PASSERELLE_|HF_)" | sort\n' > "$work/fake"
chmod +x "$work/fake"
printf 's3cret\n' > "$work/redis_password"
printf 'psk-one,psk-two\n' > "$work/api_keys"
mkdir "$work/hf"
out=$(env -i PATH="$PATH" PASSERELLE_BIN="$work/fake" HF_HOME="$work/hf" \
    HF_TOKEN_FILE="$work/redis_password" PASSERELLE_RATE_LIMIT_RPM= \
    PASSERELLE_REDIS_URL=redis://redis:6379/0 PASSERELLE_REDIS_PASSWORD_FILE="$work/redis_password" \
    PASSERELLE_API_KEYS_FILE="$work/api_keys" sh deploy/docker-entrypoint.sh gateway --listen 0.0.0.0:8080)
for expected in "args: gateway --listen 0.0.0.0:8080" "PASSERELLE_API_KEYS=psk-one,psk-two" \
    "PASSERELLE_REDIS_URL=redis://:s3cret@redis:6379/0"; do
    grep -qxF "$expected" <<<"$out" || { echo "entrypoint: missing '$expected' in:"; echo "$out"; exit 1; } >&2
done
if grep -qE "^PASSERELLE_(RATE_LIMIT_RPM|API_KEYS_FILE|REDIS_PASSWORD_FILE)=" <<<"$out"; then
    echo "entrypoint: left an empty or _FILE variable set: $out" >&2
    exit 1
fi
[ "$(readlink "$work/hf/token")" = "$work/redis_password" ] || { echo "entrypoint: no HF token link" >&2; exit 1; }
echo "entrypoint: secret files become variables, empty variables are unset, HF token linked"

echo "== nginx: config test, end-to-end streaming through TLS, sslyze"
timeout 300 python3 deploy/test/nginx_e2e.py --bin-dir "$bin"
