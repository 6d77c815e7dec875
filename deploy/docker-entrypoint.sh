#!/bin/sh
# Entry point of the passerelle image: turns secret files into the variables the binary reads,
# then runs `passerelle "$@"` (the role and its flags come from the container's command).
#
#   PASSERELLE_<NAME>_FILE=/run/secrets/x   exports PASSERELLE_<NAME> with the file's content
#                                           (e.g. PASSERELLE_API_KEYS_FILE, PASSERELLE_JWT_SECRET_FILE)
#   PASSERELLE_REDIS_PASSWORD_FILE          puts the password into PASSERELLE_REDIS_URL
#                                           (redis://host:6379/0 -> redis://:secret@host:6379/0)
#   HF_TOKEN_FILE                           links $HF_HOME/token to it, where the hub client looks
#   PASSERELLE_<NAME>= (empty)              unset, so compose's `${VAR:-}` means "not set"
#                                           (passerelle would reject an empty number)
#
# Secrets never appear in the image, in `docker inspect` or on a command line.
set -eu

read_secret() {
    # Trailing newlines are dropped, as `$(cat)` does.
    if [ ! -r "$1" ]; then
        echo "passerelle-entrypoint: cannot read secret file $1" >&2
        exit 1
    fi
    cat "$1"
}

for name in $(env | sed -n 's/^\(PASSERELLE_[A-Z0-9_]*\)=$/\1/p'); do
    unset "$name"
done

for assignment in $(env | sed -n 's/^\(PASSERELLE_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
    [ "$assignment" = PASSERELLE_REDIS_PASSWORD ] && continue
    file=$(printenv "${assignment}_FILE")
    value=$(read_secret "$file")
    [ -n "$value" ] || continue
    export "$assignment=$value"
    unset "${assignment}_FILE"
done

if [ -n "${PASSERELLE_REDIS_PASSWORD_FILE:-}" ] && [ -n "${PASSERELLE_REDIS_URL:-}" ]; then
    password=$(read_secret "$PASSERELLE_REDIS_PASSWORD_FILE")
    case "$PASSERELLE_REDIS_URL" in
        redis://*@* | rediss://*@*) ;; # credentials already in the URL
        redis://*) PASSERELLE_REDIS_URL="redis://:${password}@${PASSERELLE_REDIS_URL#redis://}" ;;
        rediss://*) PASSERELLE_REDIS_URL="rediss://:${password}@${PASSERELLE_REDIS_URL#rediss://}" ;;
    esac
    export PASSERELLE_REDIS_URL
    unset PASSERELLE_REDIS_PASSWORD_FILE password
fi

if [ -n "${HF_TOKEN_FILE:-}" ] && [ -n "${HF_HOME:-}" ] && [ -w "$HF_HOME" ]; then
    # A link, not a copy: the token stays in the secret mount, never in the model volume.
    ln -sfn "$HF_TOKEN_FILE" "$HF_HOME/token"
fi

if [ "${1:-}" = passerelle ]; then
    shift
fi
exec "${PASSERELLE_BIN:-/usr/local/bin/passerelle}" "$@"
