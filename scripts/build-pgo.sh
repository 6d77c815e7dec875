#!/usr/bin/env bash
# Builds the passerelle binary with profile-guided optimisation (PGO): an instrumented build,
# a training run of the gateway relaying chat completions to the bundled mock upstream, then
# the build optimised with the profile that run recorded. Both builds use the `dist` profile
# (the release profile with whole-program LTO, see Cargo.toml). On the gateway's relay path
# the result spends a sixth to a third less CPU per request than a plain release build
# (docs/benchmarks.md); the Docker image is built this way.
#
# The training is scripts/pgo-train.sh.
#
# Needs llvm-profdata that reads the profiles of rustc's LLVM: rustup's llvm-tools component
# (`rustup component add llvm-tools`, found by itself), or a system one at least as new as
# LLVM 19 (Debian: `apt-get install llvm-19`). Environment knobs, with their defaults:
#   LLVM_PROFDATA   the llvm-tools one, else the newest llvm-profdata-NN on PATH
#   PGO_DIR         ${CARGO_TARGET_DIR:-target}/pgo   (builds, profiles; the binary is
#                   $PGO_DIR/optimized/dist/passerelle)
#   TRAIN_SECS, BASE_PORT  passed to scripts/pgo-train.sh
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
pgo_dir=${PGO_DIR:-${CARGO_TARGET_DIR:-$here/target}/pgo}
profiles=$pgo_dir/profiles

find_profdata() {
    if [[ -n ${LLVM_PROFDATA:-} ]]; then
        echo "$LLVM_PROFDATA"
        return
    fi
    local host tools
    host=$(rustc -vV | sed -n 's/^host: //p')
    tools=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
    if [[ -x $tools ]]; then
        echo "$tools"
        return
    fi
    local version
    for version in 30 29 28 27 26 25 24 23 22 21 20 19; do
        if command -v "llvm-profdata-$version" >/dev/null; then
            command -v "llvm-profdata-$version"
            return
        fi
    done
    return 1
}

profdata=$(find_profdata) || {
    echo "no llvm-profdata: run 'rustup component add llvm-tools' or install llvm-19 or newer" >&2
    exit 1
}

# The wrapper keeps the profile flags for the gateway's crates only (see scripts/pgo-rustc.sh).
build() {
    local dir=$1 flag=$2
    RUSTC_WRAPPER="$here/scripts/pgo-rustc.sh" RUSTFLAGS="${RUSTFLAGS:-} $flag" \
        cargo build --profile dist --locked -p passerelle-cli --bin passerelle \
        --target-dir "$pgo_dir/$dir" --manifest-path "$here/Cargo.toml"
}

echo "== 1/4 instrumented build" >&2
build instrumented "-Cprofile-generate=$profiles"
bin=$pgo_dir/instrumented/dist/passerelle

echo "== 2/4 training run" >&2
rm -rf "$profiles"
# Each process writes its profile when it exits normally; %p keeps them apart.
LLVM_PROFILE_FILE=$profiles/%p-%m.profraw "$here/scripts/pgo-train.sh" "$bin"

echo "== 3/4 merging the profiles with $profdata" >&2
"$profdata" merge -o "$pgo_dir/merged.profdata" "$profiles"/*.profraw
# Named by its digest: cargo rebuilds on a change of flags, not of the file they name.
rm -f "$pgo_dir"/merged-*.profdata
merged=$pgo_dir/merged-$(sha256sum "$pgo_dir/merged.profdata" | cut -c1-16).profdata
mv "$pgo_dir/merged.profdata" "$merged"

echo "== 4/4 optimised build" >&2
build optimized "-Cprofile-use=$merged"
echo "$pgo_dir/optimized/dist/passerelle"
