# Sourced by the scripts that start servers on loopback for a measurement or a training run.
#
#   processes_start NAME   makes $tmp (a fresh directory under /tmp) and the empty list $pids;
#                          on exit, every PID appended to $pids is stopped and waited for, and
#                          $tmp is removed. Interrupts exit with 130 through the same path.
#   wait_port PORT [SECS]  polls until something accepts connections on 127.0.0.1:PORT, for at
#                          most SECS seconds (default 30).

processes_start() {
    tmp=$(mktemp -d "/tmp/$1.XXXXXX")
    pids=()
    trap processes_stop EXIT
    trap 'exit 130' INT TERM
}

processes_stop() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}

wait_port() {
    local port=$1 secs=${2:-30}
    local deadline=$((SECONDS + secs))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "nothing listens on port $port after $secs s" >&2; return 1; }
        sleep 0.1
    done
}
