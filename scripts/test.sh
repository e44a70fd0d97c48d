#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): formatting, clippy, the Rust tests, a release
# build of nimbus, then the end-to-end tests (official convex CLI + ConvexHttpClient against a
# real `nimbus serve`; a web page in headless Chromium from another origin). The Postgres
# backend's tests need the local PostgreSQL (127.0.0.1:5432, trust auth); this script starts a
# PgBouncer in front of it (scripts/pgbouncer.sh, installing Debian's package if needed).
#
# Environment:
#   CARGO_TARGET_DIR   cargo target directory (default $HOME/.cache/nimbus-target)
#   NIMBUS_BIN         binary for the e2e tests (default $CARGO_TARGET_DIR/release/nimbus)
#   E2E_ONLY=1         skip the cargo steps (fmt, clippy, tests, build) and run only the e2e tests
#   NIMBUS_JS_ENGINE   the engine of the e2e servers (default: the build's, V8 where libnode was
#                      found; e2e-quickjs sets quickjs)
#   CI=true            requires V8 in the build (NIMBUS_REQUIRE_V8=1)
#   FUZZ_SECONDS       seconds per fuzz target (default 60)
#   NIMBUS_TEST_POSTGRES_URL  the Postgres server of the Postgres tests (default
#                      postgres://postgres@127.0.0.1:5432/...)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

STARTED=$SECONDS
CURRENT_STEP="setup"
STEPS_DONE=()
on_exit() {
  local status=$?
  local elapsed=$((SECONDS - STARTED))
  echo
  if [ "$status" -eq 0 ]; then
    printf '%s\n' "${C_GREEN}${C_BOLD}SUMMARY: test.sh succeeded${C_OFF} in ${elapsed}s (steps: ${STEPS_DONE[*]})"
  else
    printf '%s\n' "${C_RED}${C_BOLD}SUMMARY: test.sh FAILED${C_OFF} at step '$CURRENT_STEP' (exit $status) after ${elapsed}s; passed before it: ${STEPS_DONE[*]:-none}"
  fi
}
trap on_exit EXIT

step() { # step NAME COMMAND...
  CURRENT_STEP="$1"
  shift
  local t0=$SECONDS
  log "$CURRENT_STEP: $*"
  "$@"
  ok "$CURRENT_STEP (${C_DIM}$((SECONDS - t0))s${C_OFF})"
  STEPS_DONE+=("$CURRENT_STEP")
}

ensure_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo fmt/clippy missing and rustup not found"
    rustup component add rustfmt clippy
  fi
}

rust_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-tests=warn
    # nextest does not run doc tests.
    cargo test --workspace --doc
  else
    cargo test --workspace
  fi
}

typecheck_apps() {
  "$REPO_ROOT/tests/e2e/node_modules/.bin/tsc" --noEmit -p "$REPO_ROOT/tests/e2e/app/convex"
  "$REPO_ROOT/examples/pos/node_modules/.bin/tsc" --noEmit -p "$REPO_ROOT/examples/pos/convex"
}

e2e_quickjs() {
  export NIMBUS_BIN="${NIMBUS_BIN:-$NIMBUS_BIN_DEFAULT}"
  NIMBUS_JS_ENGINE=quickjs node --test --test-concurrency=1 --test-timeout=300000 \
    tests/e2e/{errors,limits,db,actions,http-actions,validators,pos}.test.mjs
}

e2e_tests() {
  export NIMBUS_BIN="${NIMBUS_BIN:-$NIMBUS_BIN_DEFAULT}"
  [ -x "$NIMBUS_BIN" ] || die "nimbus binary not found at $NIMBUS_BIN"
  info "NIMBUS_BIN=$NIMBUS_BIN"
  # One file at a time: each starts its own server, and the machine has 2 cores.
  # Every test is bounded (5 minutes unless it sets its own timeout).
  node --test --test-concurrency=1 --test-timeout=300000 tests/e2e/*.test.mjs
}

# CI must build with V8 (the default engine): a build that silently fell back to QuickJS
# would pass without testing it.
if [ "${CI:-}" = "true" ]; then
  export NIMBUS_REQUIRE_V8=1
fi
log "Nimbus test suite (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
CURRENT_STEP="tools"
check_toolchain
ok "cargo $(cargo --version | cut -d' ' -f2), node $(node --version), npm $(npm --version)"

if [ -z "${E2E_ONLY:-}" ]; then
  ensure_rust_components
  step fmt cargo fmt --all -- --check
  step clippy cargo clippy --workspace --all-targets -- -D warnings
  # The V8 shim against the next Debian release's V8 (11.3; this one's is 10.2): it compiles
  # without a warning and links (scripts/v8-next-debian.sh; `run` there runs the tests on it).
  step v8-next bash "$REPO_ROOT/scripts/v8-next-debian.sh"
fi
# Before the Rust tests: the Rust-client test pushes examples/pos with the official CLI.
step npm-ci-e2e npm_ci "$REPO_ROOT/tests/e2e"
step npm-ci-pos npm_ci "$REPO_ROOT/examples/pos"
# The Postgres backend's tests (Rust conformance suite, e2e) reach the shared tier through a
# real PgBouncer in transaction mode, and the local Postgres directly.
start_pgbouncer() {
  NIMBUS_TEST_PGBOUNCER_URL="$(bash "$REPO_ROOT/scripts/pgbouncer.sh")"
  export NIMBUS_TEST_PGBOUNCER_URL
  info "NIMBUS_TEST_PGBOUNCER_URL=$NIMBUS_TEST_PGBOUNCER_URL"
}
need_cmd psql postgresql-client
step pgbouncer start_pgbouncer
if [ -z "${E2E_ONLY:-}" ]; then
  step rust-tests rust_tests
  step build cargo build --release -p nimbus
fi
step typecheck typecheck_apps
# The browser test (web-clients.test.mjs) drives Debian's Chromium with playwright-core.
step chromium need_cmd chromium chromium
step e2e e2e_tests
# QuickJS stays a supported engine (--js-engine quickjs, and builds without libnode): its
# runtime tests run above (nimbus-runtime's pool_quickjs), and a core e2e subset here.
step e2e-quickjs e2e_quickjs
# The official Python client (PyPI `convex`, pinned) with user auth, in a cached virtualenv.
step python-client bash "$REPO_ROOT/scripts/python-tests.sh"
step bench-smoke env SMOKE=1 bash "$REPO_ROOT/scripts/bench.sh"
# The Postgres capacity runbook, short: 200 shared-tier tenants on a throwaway cluster with
# max_connections = 50 behind PgBouncer, under load, then PgBouncer and Postgres restarted
# under inserts; its pass/fail checklist.
step capacity env DURATION=10 bash "$REPO_ROOT/scripts/capacity-test.sh"
# Every fuzz target for a minute (scripts/fuzz.sh; nightly Rust, cargo-fuzz).
step fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash "$REPO_ROOT/scripts/fuzz.sh"
