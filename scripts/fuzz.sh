#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz (libFuzzer) targets in fuzz/ with nightly Rust and runs each
# for FUZZ_SECONDS from its seed corpus (fuzz/corpus/<target>, inputs taken from the tests).
# Fails on the first crash, leaving the input in OUT/artifacts/<target>/; a crash becomes a
# regression test next to the code it broke. New inputs libFuzzer finds go to a scratch
# corpus under OUT, never into the repository.
#
#   bash scripts/fuzz.sh                   # every target, 60 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh jwt
#
# Environment: FUZZ_SECONDS (default 60), OUT (default ./target-fuzz), FUZZ_TARGET_DIR (the
# build cache, default $HOME/.cache/nimbus-fuzz-target). Needs a nightly toolchain (rustup's
# `nightly`); installs cargo-fuzz from crates.io when it is missing.
#
# `sync_session` and `http_api` run a whole server in the fuzzing process; its data goes to a
# fresh directory on tmpfs (/dev/shm when there is one: its commits fsync), removed after
# each target.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
OUT="${OUT:-$REPO_ROOT/target-fuzz}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/nimbus-fuzz-target}"
ALL_TARGETS=(convex_json index_key_order query_parse function_input jwt sync_session http_api)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

cargo +nightly --version >/dev/null 2>&1 || die "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  info "installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked --quiet
fi

log "building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR"
SUMMARY=()
for target in "${TARGETS[@]}"; do
  scratch="$OUT/corpus/$target"
  artifacts="$OUT/artifacts/$target/"
  mkdir -p "$scratch" "$artifacts"
  log "fuzzing $target for ${FUZZ_SECONDS}s"
  log_file="$OUT/$target.log"
  data_root=/dev/shm
  [ -d "$data_root" ] && [ -w "$data_root" ] || data_root="${TMPDIR:-/tmp}"
  data_dir=$(mktemp -d "$data_root/nimbus-fuzz-$target.XXXXXX")
  extra=()
  case "$target" in
    # A whole server lives across inputs, so memory outliving an input is expected: leak
    # checks would run LeakSanitizer after almost every input (a fifth of the speed), and
    # growth is caught by -rss_limit_mb instead. Inputs are decoded with `arbitrary`, so
    # longer ones are allowed from the start (deeper sessions).
    sync_session | http_api) extra=(-detect_leaks=0 -len_control=0 -max_len=2048) ;;
  esac
  if ! NIMBUS_FUZZ_DATA_DIR="$data_dir" cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR" "$target" \
      "$scratch" "fuzz/corpus/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$artifacts" -print_final_stats=1 ${extra[@]+"${extra[@]}"} >"$log_file" 2>&1; then
    tail -40 "$log_file"
    rm -rf "$data_dir"
    die "fuzz target $target crashed; the input is in $artifacts (log: $log_file)"
  fi
  rm -rf "$data_dir"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log_file" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log_file" | tail -1 | grep -o '[0-9]*')
  ok "$target: ${runs:-?} executions in ${FUZZ_SECONDS}s, coverage ${cov:-?} edges, 0 crashes"
  SUMMARY+=("$target=${runs:-?}")
done
ok "fuzzing done: ${SUMMARY[*]} (executions per target; 0 crashes)"
