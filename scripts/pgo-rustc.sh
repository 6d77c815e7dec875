#!/usr/bin/env bash
# The rustc wrapper of scripts/build-pgo.sh: keeps the profile flags (-Cprofile-generate,
# -Cprofile-use) for the crates of the gateway's request path only, and drops them for every
# other crate.
#
# The training run only exercises the gateway. Code it never ran counts as cold in a PGO build,
# and LLVM optimises cold code for size: with the profile on every crate, the llm service's
# prefill took 60% longer and its throughput at 4 streams fell by a quarter
# (docs/benchmarks.md). The model crates (candle, gemm, the llm, safety and embeddings crates,
# tokenizers) are not in the list, so they are built exactly as in a plain release build.
set -euo pipefail

rustc=$1
shift

# The crates whose code a relayed request runs: the gateway and its store, the binary, and the
# HTTP, async, JSON, metrics and tracing crates under them. Cargo does not see a change here:
# after one, delete target/pgo so that both builds start again.
pgo_crates="passerelle passerelle_gateway passerelle_store passerelle_telemetry passerelle_pii
    hyper hyper_util http http_body http_body_util httparse httpdate want try_lock
    axum axum_core matchit tower tower_layer tower_service tower_http
    tokio tokio_util tokio_stream mio socket2 slab atomic_waker sync_wrapper async_stream
    futures futures_util futures_core futures_channel futures_task
    bytes serde serde_json serde_path_to_error itoa ryu memchr
    redb sha2 subtle uuid rand rand_core rand_chacha ppv_lite86 getrandom
    prometheus tracing tracing_core tracing_subscriber
    hashbrown foldhash smallvec percent_encoding form_urlencoded mime"
pgo_crates=" $(echo $pgo_crates) "

crate=""
previous=""
for arg in "$@"; do
    [[ $previous == --crate-name ]] && crate=$arg
    previous=$arg
done

if [[ -n $crate && $pgo_crates == *" $crate "* ]]; then
    exec "$rustc" "$@"
fi

args=()
for arg in "$@"; do
    case $arg in
        -Cprofile-generate=* | -Cprofile-use=*) continue ;;
        -C)
            # The two-word form: `-C profile-use=...`.
            args+=("$arg")
            ;;
        profile-generate=* | profile-use=*)
            if [[ ${#args[@]} -gt 0 && ${args[-1]} == -C ]]; then
                unset 'args[-1]'
                continue
            fi
            args+=("$arg")
            ;;
        *) args+=("$arg") ;;
    esac
done
exec "$rustc" "${args[@]}"
