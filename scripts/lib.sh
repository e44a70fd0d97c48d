# shellcheck shell=bash disable=SC2034
# Helpers shared by scripts/demo.sh and scripts/test.sh (sourced, not run).
# Needs: bash. Sets REPO_ROOT and exports CARGO_TARGET_DIR.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nimbus-target}"
NIMBUS_BIN_DEFAULT="$CARGO_TARGET_DIR/release/nimbus"

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  C_BOLD=$'\033[1m'; C_GREEN=$'\033[32m'; C_RED=$'\033[31m'; C_DIM=$'\033[2m'; C_OFF=$'\033[0m'
else
  C_BOLD=""; C_GREEN=""; C_RED=""; C_DIM=""; C_OFF=""
fi

log()  { printf '%s\n' "${C_BOLD}==>${C_OFF} $*"; }
info() { printf '%s\n' "    $*"; }
ok()   { printf '%s\n' "${C_GREEN}ok${C_OFF}  $*"; }
die()  { printf '%s\n' "${C_RED}error:${C_OFF} $*" >&2; exit 1; }

APT_UPDATED=0
# apt_install PKG... : installs Debian packages (root, or via sudo), running `apt-get update` once.
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: $*"
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these yourself: $*"
  if [ "$APT_UPDATED" -eq 0 ]; then
    info "apt-get update"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  info "apt-get install $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# need_cmd CMD APT_PACKAGE : installs APT_PACKAGE when CMD is missing.
need_cmd() {
  if ! command -v "$1" >/dev/null 2>&1; then
    info "$1 not found: installing Debian package $2"
    apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
  fi
}

# check_toolchain : cargo, a C compiler (rusqlite builds SQLite from source), node >= 20, npm,
# and V8 (ensure_libnode).
check_toolchain() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from https://rustup.rs"
  need_cmd cc build-essential
  need_cmd curl curl
  need_cmd node nodejs
  need_cmd npm npm
  local node_major
  node_major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$node_major" -ge 20 ] || die "node >= 20 is required (found $(node --version))"
  ensure_libnode
}

# ensure_libnode : makes Debian's V8 (libnode) available to the build (scripts/libnode.sh) and
# exports NIMBUS_LIBNODE_DIR. Without it Nimbus builds with QuickJS only: a warning here, an
# error when NIMBUS_REQUIRE_V8=1 (CI).
ensure_libnode() {
  need_cmd g++ g++
  local dir
  if dir="$(bash "$REPO_ROOT/scripts/libnode.sh")"; then
    export NIMBUS_LIBNODE_DIR="$dir"
    info "V8: libnode from $dir"
  elif [ "${NIMBUS_REQUIRE_V8:-}" = "1" ]; then
    die "NIMBUS_REQUIRE_V8=1 but scripts/libnode.sh could not provide libnode"
  else
    info "V8 unavailable (scripts/libnode.sh failed): building with QuickJS only"
  fi
}

# npm_ci DIR : a clean install of DIR's locked dependencies.
npm_ci() {
  info "npm ci in ${1#"$REPO_ROOT"/}"
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
}

# json_field FIELD : prints FIELD of the JSON object on stdin (empty if absent).
json_field() {
  node -e '
    let s = "";
    process.stdin.on("data", (d) => (s += d)).on("end", () => {
      try { const v = JSON.parse(s)[process.argv[1]]; if (v !== undefined) process.stdout.write(String(v)); } catch {}
    });' "$1"
}

# write_push_request BASE OUT_PREFIX LOG : creates a SQLite tenant `push` on the server at BASE
# (admin key in NIMBUS_ADMIN_KEY) and has the official CLI of examples/pos write its push of
# examples/pos to OUT_PREFIX.json instead of pushing, for `nimbus-bench provision` to replay.
write_push_request() {
  local created url key
  created="$(curl -fsS -X POST "$1/admin/tenants" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" \
    -H 'content-type: application/json' -d '{"name":"push","storage":"sqlite"}')" || die "creating the tenant push failed"
  url="$(printf '%s' "$created" | json_field url)"
  key="$(printf '%s' "$created" | json_field adminKey)"
  (cd "$REPO_ROOT/examples/pos" && env -u CONVEX_DEPLOYMENT CONVEX_SELF_HOSTED_URL="$url" \
    CONVEX_SELF_HOSTED_ADMIN_KEY="$key" node node_modules/convex/bin/main.js deploy --yes --typecheck disable \
    --codegen disable --push-all-modules --write-push-request "$2") >"$3" 2>&1 ||
    { cat "$3"; die "writing the push request failed"; }
  [ -s "$2.json" ] || die "the CLI wrote no push request to $2.json"
}

# wait_healthy URL PID TIMEOUT_S LOG : polls URL/health until 200, fails early if PID exits.
wait_healthy() {
  local url="$1" pid="$2" timeout="$3" logfile="$4" waited=0
  until curl -fsS -m 2 "$url/health" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf '%s\n' "--- last lines of $logfile" >&2
      tail -n 30 "$logfile" >&2 || true
      die "nimbus exited during startup"
    fi
    if [ "$waited" -ge $((timeout * 10)) ]; then
      tail -n 30 "$logfile" >&2 || true
      die "nimbus did not become healthy within ${timeout}s"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}
