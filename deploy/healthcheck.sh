#!/bin/sh
# Health probe of the passerelle image, for Docker's HEALTHCHECK and compose healthchecks.
#
#   passerelle-healthcheck http <port> [path]     GET http://127.0.0.1:<port><path> must answer 2xx
#                                                 (path defaults to /health/live)
#   passerelle-healthcheck grpc <port> <service>  grpc.health.v1 Check(<service>) must be SERVING,
#                                                 i.e. the model is loaded and warm
#
# Without arguments it reads PASSERELLE_HEALTHCHECK ("http 8080 /health/live" by default, the
# image's default role).
set -eu

if [ "$#" -eq 0 ]; then
    # shellcheck disable=SC2086 # word splitting is the point
    set -- ${PASSERELLE_HEALTHCHECK:-http 8080 /health/live}
fi

case "${1:-}" in
    http)
        exec curl --fail --silent --show-error --max-time 5 --output /dev/null \
            "http://127.0.0.1:${2:?port}${3:-/health/live}"
        ;;
    grpc)
        exec grpc_health_probe -addr="127.0.0.1:${2:?port}" -service="${3:?service}" \
            -connect-timeout=2s -rpc-timeout=5s
        ;;
    *)
        echo "usage: passerelle-healthcheck http <port> [path] | grpc <port> <service>" >&2
        exit 2
        ;;
esac
