#!/usr/bin/env bash
# Builds Nimbus, starts it on SQLite in ./nimbus-data, creates the tenant `demo`, pushes
# examples/pos with the official Convex CLI, makes a few calls, then keeps serving until
# Ctrl-C (or `kill <pid>`).
#
# Environment:
#   NIMBUS_LISTEN      address to serve on (default 127.0.0.1:3210)
#   NIMBUS_DATA_DIR    data directory (default ./nimbus-data)
#   NIMBUS_ADMIN_KEY   instance admin key (default: the one nimbus generates into the data dir)
#   CARGO_TARGET_DIR   cargo target directory (default $HOME/.cache/nimbus-target)
#   NIMBUS_BIN         run this binary instead of building one (skips cargo build)
#   DEMO_NO_WAIT=1     stop the server and exit after the calls instead of serving on
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

LISTEN="${NIMBUS_LISTEN:-127.0.0.1:3210}"
DATA_DIR="${NIMBUS_DATA_DIR:-$REPO_ROOT/nimbus-data}"
BASE_URL="http://$LISTEN"
TENANT=demo
TENANT_URL="$BASE_URL/t/$TENANT"
KEY_FILE="$DATA_DIR/$TENANT.adminkey"
LOG_FILE="$DATA_DIR/server.log"
PID_FILE="$DATA_DIR/server.pid"
NIMBUS="${NIMBUS_BIN:-$NIMBUS_BIN_DEFAULT}"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    info "stopping nimbus (pid $SERVER_PID)"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  SERVER_PID=""
}
trap 'stop_server' EXIT
trap 'echo; stop_server; exit 130' INT
trap 'stop_server; exit 143' TERM

log "[1/6] Checking tools"
check_toolchain
ok "cargo $(cargo --version | cut -d' ' -f2), node $(node --version), npm $(npm --version)"

if [ -n "${NIMBUS_BIN:-}" ]; then
  log "[2/6] Using NIMBUS_BIN=$NIMBUS_BIN (not building)"
else
  log "[2/6] Building nimbus (cargo build --release -p nimbus, target dir $CARGO_TARGET_DIR)"
  cargo build --release -p nimbus
fi
[ -x "$NIMBUS" ] || die "build finished but $NIMBUS is missing"
ok "$NIMBUS"

log "[3/6] Starting nimbus serve on $LISTEN (data in ${DATA_DIR#"$REPO_ROOT"/}, log in ${LOG_FILE#"$REPO_ROOT"/})"
mkdir -p "$DATA_DIR"
if [ -f "$PID_FILE" ]; then
  old_pid="$(cat "$PID_FILE")"
  if kill -0 "$old_pid" 2>/dev/null && grep -q nimbus "/proc/$old_pid/cmdline" 2>/dev/null; then
    info "stopping the nimbus left running by an earlier demo (pid $old_pid)"
    kill -TERM "$old_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$old_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
fi
if curl -fsS -m 2 "$BASE_URL/health" >/dev/null 2>&1; then
  die "something already answers on $LISTEN: stop it or set NIMBUS_LISTEN"
fi
printf '\n===== demo.sh start at %s\n' "$(date -Is)" >>"$LOG_FILE"
"$NIMBUS" serve --listen "$LISTEN" --data-dir "$DATA_DIR" >>"$LOG_FILE" 2>&1 &
SERVER_PID=$!
echo "$SERVER_PID" >"$PID_FILE"
wait_healthy "$BASE_URL" "$SERVER_PID" 60 "$LOG_FILE"
if [ -n "${NIMBUS_ADMIN_KEY:-}" ]; then
  ADMIN_KEY="$NIMBUS_ADMIN_KEY"
else
  [ -s "$DATA_DIR/admin_key" ] || die "NIMBUS_ADMIN_KEY is unset and $DATA_DIR/admin_key was not generated"
  ADMIN_KEY="$(tr -d '\r\n' <"$DATA_DIR/admin_key")"
fi
ok "nimbus is up (pid $SERVER_PID)"

log "[4/6] Creating tenant '$TENANT'"
BODY_FILE="$(mktemp)"
trap 'rm -f "$BODY_FILE"; stop_server' EXIT
admin() { # admin METHOD PATH [JSON] : sets HTTP_STATUS and BODY
  local data=()
  [ $# -ge 3 ] && data=(--data "$3")
  HTTP_STATUS="$(curl -sS -m 30 -X "$1" -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
    "${data[@]}" -o "$BODY_FILE" -w '%{http_code}' "$BASE_URL$2")" || die "$1 $2 failed"
  BODY="$(cat "$BODY_FILE")"
}
create_tenant() {
  admin POST /admin/tenants "{\"name\":\"$TENANT\"}"
  [ "$HTTP_STATUS" = 201 ] || die "creating tenant $TENANT failed: HTTP $HTTP_STATUS $BODY"
  TENANT_KEY="$(printf '%s' "$BODY" | json_field adminKey)"
  [ -n "$TENANT_KEY" ] || die "no adminKey in: $BODY"
  (umask 077 && printf '%s\n' "$TENANT_KEY" >"$KEY_FILE")
  ok "created tenant $TENANT (admin key saved to ${KEY_FILE#"$REPO_ROOT"/})"
}
admin GET "/admin/tenants/$TENANT"
case "$HTTP_STATUS" in
  200)
    if [ -s "$KEY_FILE" ]; then
      TENANT_KEY="$(tr -d '\r\n' <"$KEY_FILE")"
      ok "tenant $TENANT exists: reusing the admin key in ${KEY_FILE#"$REPO_ROOT"/}"
    else
      info "tenant $TENANT exists but ${KEY_FILE#"$REPO_ROOT"/} is missing: deleting and re-creating it"
      admin DELETE "/admin/tenants/$TENANT"
      [ "$HTTP_STATUS" = 204 ] || die "deleting tenant $TENANT failed: HTTP $HTTP_STATUS $BODY"
      create_tenant
    fi
    ;;
  404) create_tenant ;;
  *) die "GET /admin/tenants/$TENANT: HTTP $HTTP_STATUS $BODY" ;;
esac

log "[5/6] Pushing examples/pos with the official Convex CLI (npx convex deploy --yes)"
npm_ci "$REPO_ROOT/examples/pos"
(
  cd "$REPO_ROOT/examples/pos"
  env -u CONVEX_DEPLOYMENT -u CONVEX_DEPLOY_KEY -u CONVEX_URL \
    CONVEX_SELF_HOSTED_URL="$TENANT_URL" CONVEX_SELF_HOSTED_ADMIN_KEY="$TENANT_KEY" \
    npx convex deploy --yes
)
ok "pushed"

log "[6/6] Calling the app with ConvexHttpClient (examples/pos/scripts/demo-calls.mjs)"
node "$REPO_ROOT/examples/pos/scripts/demo-calls.mjs" "$TENANT_URL"

echo
log "Nimbus is serving tenant '$TENANT' at ${C_BOLD}$TENANT_URL${C_OFF}"
info "admin key of the tenant: ${KEY_FILE#"$REPO_ROOT"/}   server log: ${LOG_FILE#"$REPO_ROOT"/}"
info "push again:  cd examples/pos && CONVEX_SELF_HOSTED_URL=$TENANT_URL CONVEX_SELF_HOSTED_ADMIN_KEY=\$(cat $KEY_FILE) npx convex deploy --yes"
if [ -n "${DEMO_NO_WAIT:-}" ]; then
  info "DEMO_NO_WAIT is set: stopping"
  exit 0
fi
info "stop it with Ctrl-C, or from another shell: kill $SERVER_PID"
set +e
wait "$SERVER_PID"
status=$?
set -e
SERVER_PID=""
rm -f "$PID_FILE"
case "$status" in
  0 | 130 | 143) ok "nimbus stopped" ;;
  *) die "nimbus exited with status $status; see ${LOG_FILE#"$REPO_ROOT"/}" ;;
esac
