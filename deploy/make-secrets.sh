#!/bin/sh
# Creates the secret files compose.yml mounts, in secrets/ at the repository root. Existing
# files are kept, so running it again never rotates a secret by accident.
#   deploy/make-secrets.sh             # Redis and Grafana passwords, one API key, empty HF token
#   echo hf_xxx > secrets/hf_token     # for gated or private models
set -eu
cd "$(dirname "$0")/.."
umask 077
mkdir -p secrets
chmod 700 secrets

new() {
    # 32 random bytes, hex: URL-safe, so the Redis password can go into a redis:// URL as is.
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

[ -e secrets/redis_password ] || new > secrets/redis_password
[ -e secrets/grafana_admin_password ] || new > secrets/grafana_admin_password
if [ ! -e secrets/api_keys ]; then
    key="psk-$(new)"
    printf '%s\n' "$key" > secrets/api_keys
    echo "API key (also in secrets/api_keys; comma-separate more): $key"
fi
[ -e secrets/hf_token ] || : > secrets/hf_token
# Compose bind-mounts these files with their host permissions, and the services run as
# non-root users (passerelle 10001, redis 999, grafana 472): the files must be world-readable;
# the 0700 directory keeps other host users out.
chmod 644 secrets/*
ls -l secrets
