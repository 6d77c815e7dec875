#!/bin/sh
# Run by the nginx image's entrypoint (mounted into /docker-entrypoint.d/). Starts a loop that
# reloads nginx when certbot has renewed a certificate: certbot's deploy hook touches
# /etc/letsencrypt/.renewed (see compose.yml), and a reload makes nginx read the new files
# without dropping connections.
set -eu
marker=/etc/letsencrypt/.renewed
seen=/tmp/.renewal-seen
touch "$seen"
(
    while :; do
        sleep 300
        if [ -e "$marker" ] && [ "$marker" -nt "$seen" ]; then
            touch "$seen"
            echo "reload-on-renewal: certificate renewed, reloading nginx"
            nginx -s reload || echo "reload-on-renewal: reload failed" >&2
        fi
    done
) &
