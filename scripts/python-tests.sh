#!/usr/bin/env bash
# The tests of the official Python client (PyPI `convex`) against a real `nimbus serve`, and
# of `GET /metrics` read by the official Prometheus client library: tests/python/test_*.py,
# run with unittest in a virtualenv that has both, pinned.
# Each test file starts its own server and pushes its own project with the official CLI of
# examples/pos (installed here when missing).
#
# Environment:
#   CARGO_TARGET_DIR       cargo target directory (default $HOME/.cache/nimbus-target)
#   NIMBUS_BIN             the server binary (default $CARGO_TARGET_DIR/release/nimbus; build
#                          it with `cargo build --release -p nimbus`)
#   NIMBUS_PYVENV          the virtualenv, created or reused (default $HOME/.cache/nimbus-pyvenv)
#   PYTHON_TESTS_TIMEOUT   bound on the whole run, in seconds (default 300)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# The client version the tests are written against (it embeds the Rust crate convex 0.10.4).
CONVEX_PY_VERSION="0.8.1"
# The official Prometheus client library, whose parser reads `GET /metrics` (test_metrics.py).
PROMETHEUS_CLIENT_VERSION="0.26.0"
VENV="${NIMBUS_PYVENV:-$HOME/.cache/nimbus-pyvenv}"

export NIMBUS_BIN="${NIMBUS_BIN:-$NIMBUS_BIN_DEFAULT}"
[ -x "$NIMBUS_BIN" ] || die "nimbus binary not found at $NIMBUS_BIN (cargo build --release -p nimbus)"
need_cmd python3 python3
need_cmd node nodejs
if [ ! -f "$REPO_ROOT/examples/pos/node_modules/convex/bin/main.js" ]; then
  need_cmd npm npm
  npm_ci "$REPO_ROOT/examples/pos"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating the virtualenv $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv's pip bootstrap separately.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
installed() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(installed convex)" != "$CONVEX_PY_VERSION" ] ||
  [ "$(installed prometheus_client)" != "$PROMETHEUS_CLIENT_VERSION" ]; then
  log "installing convex==$CONVEX_PY_VERSION prometheus_client==$PROMETHEUS_CLIENT_VERSION into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "convex==$CONVEX_PY_VERSION" "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
fi

log "Python client tests (convex==$CONVEX_PY_VERSION, NIMBUS_BIN=$NIMBUS_BIN)"
# `timeout` bounds the run even if a client call blocks in native code; each test also
# bounds its own steps.
PYTHONDONTWRITEBYTECODE=1 timeout -k 10 "${PYTHON_TESTS_TIMEOUT:-300}" \
  "$VENV/bin/python" -m unittest discover -s "$REPO_ROOT/tests/python" -p 'test_*.py' -v
ok "Python client tests"
