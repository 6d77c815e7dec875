#!/usr/bin/env bash
# Obtains the first Let's Encrypt certificate for PASSERELLE_DOMAIN and starts the stack.
# nginx cannot start without a certificate, and certbot's http-01 challenge needs nginx: so a
# throwaway self-signed certificate goes in first, nginx starts with it, certbot replaces it
# through the webroot, and nginx reloads. Renewals afterwards are automatic (certbot service).
#
#   deploy/init-letsencrypt.sh            # real certificate
#   STAGING=1 deploy/init-letsencrypt.sh  # Let's Encrypt staging (untrusted, no rate limits)
#
# Reads PASSERELLE_DOMAIN and LETSENCRYPT_EMAIL from .env. Run from anywhere, as a user that
# may use docker.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -f .env ] || { echo "no .env: cp deploy/env.example .env and edit it" >&2; exit 1; }
[ -d secrets ] || { echo "no secrets/: run deploy/make-secrets.sh" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. ./.env
set +a
domain=${PASSERELLE_DOMAIN:?set PASSERELLE_DOMAIN in .env}
email=${LETSENCRYPT_EMAIL:?set LETSENCRYPT_EMAIL in .env}
live=/etc/letsencrypt/live/$domain

compose() { docker compose "$@"; }

if compose run --rm --no-deps --entrypoint sh certbot -c "test -f $live/fullchain.pem && ! test -f $live/.dummy"; then
    echo "A certificate for $domain exists already; renewals are automatic. Starting the stack."
    compose up -d
    exit 0
fi

echo "== a temporary self-signed certificate for $domain"
compose run --rm --no-deps --entrypoint sh certbot -c "
    mkdir -p $live &&
    openssl req -x509 -nodes -newkey rsa:2048 -days 1 -subj /CN=$domain \
        -keyout $live/privkey.pem -out $live/fullchain.pem &&
    cp $live/fullchain.pem $live/chain.pem &&
    touch $live/.dummy"

echo "== starting the stack (nginx answers the ACME challenge over HTTP)"
compose up -d

echo "== requesting the certificate from Let's Encrypt (if this fails, run the script again: it starts over)"
compose run --rm --no-deps --entrypoint sh certbot -c "rm -rf $live /etc/letsencrypt/archive/$domain /etc/letsencrypt/renewal/$domain.conf"
staging=()
[ "${STAGING:-0}" = 1 ] && staging=(--staging)
compose run --rm --no-deps --entrypoint certbot certbot certonly --webroot -w /var/www/certbot \
    -d "$domain" --email "$email" --agree-tos --no-eff-email --non-interactive \
    --key-type ecdsa "${staging[@]}"

echo "== reloading nginx with the new certificate"
compose exec nginx nginx -s reload
echo "Done: https://$domain/v1 (renewals: the certbot service, twice a day; nginx reloads after one)."
