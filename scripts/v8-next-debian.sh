#!/usr/bin/env bash
# Checks the V8 shim (crates/nimbus-v8/shim/nimbus_v8.cc) against the next Debian release's V8:
# Debian 13 (trixie) ships libnode115 (Node 20.19, V8 11.3) where Debian 12 has libnode108
# (Node 18.20, V8 10.2). The shim keeps to the API the two share; this proves it.
#
#   scripts/v8-next-debian.sh            headers: downloads trixie's libnode-dev and libnode115
#                                        (apt with a private source list and state: nothing on
#                                        the machine changes), compiles the shim against their
#                                        headers with warnings as errors (a deprecation is an
#                                        API about to go), and checks that every V8 symbol the
#                                        shim needs is exported by libnode.so.115. ~20 s; CI.
#   scripts/v8-next-debian.sh run        the same build, run: a Debian 13 root (debootstrap,
#                                        cached) with Debian's own libnode-dev installed, the
#                                        repository and the Rust toolchain bound into it, then
#                                        nimbus-v8's and nimbus-runtime's tests and the e2e
#                                        tests of limits, errors, both engines side by side
#                                        and code caches, on V8 11.3. Needs root; ~15 min
#                                        cold.
#
# Environment:
#   NEXT_SUITE          the release (default trixie)
#   NEXT_CACHE          where packages and the root go (default $HOME/.cache/nimbus-v8-<suite>)
#   NEXT_MIRROR         the Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE="${NEXT_SUITE:-trixie}"
CACHE="${NEXT_CACHE:-$HOME/.cache/nimbus-v8-$SUITE}"
MIRROR="${NEXT_MIRROR:-http://deb.debian.org/debian}"
SHIM="$REPO_ROOT/crates/nimbus-v8/shim/nimbus_v8.cc"
MODE="${1:-headers}"

need_cmd g++ g++
need_cmd nm binutils

# The suite's libnode packages, unpacked under $CACHE/pkg; prints the library's path.
unpack_next_libnode() {
  local apt="$CACHE/apt" pkg="$CACHE/pkg"
  if [ -f "$pkg/.complete" ]; then
    find "$pkg/usr/lib" -name 'libnode.so.*' -type f | head -1
    return 0
  fi
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources" "$apt/debs"
  cat >"$apt/sources/next.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt/sources"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root")
  info "apt-get update ($SUITE, private state under $apt)" >&2
  apt-get "${opts[@]}" update -qq >&2 || die "apt-get update of $SUITE failed"
  # The library package's name carries Node's ABI version: take it from libnode-dev's
  # dependencies rather than hard-coding it.
  local lib_package
  lib_package="$(apt-cache "${opts[@]}" depends libnode-dev 2>/dev/null |
    sed -n 's/^ *Depends: \(libnode[0-9][0-9]*\).*/\1/p' | head -1)"
  [ -n "$lib_package" ] || die "no libnode-dev with a libnodeNNN dependency in $SUITE"
  info "downloading libnode-dev and $lib_package from $SUITE" >&2
  (cd "$apt/debs" && apt-get "${opts[@]}" download libnode-dev "$lib_package" >&2) ||
    die "apt-get download failed"
  rm -rf "$pkg"
  mkdir -p "$pkg"
  for deb in "$apt/debs"/*.deb; do dpkg -x "$deb" "$pkg"; done
  touch "$pkg/.complete"
  find "$pkg/usr/lib" -name 'libnode.so.*' -type f | head -1
}

check_headers() {
  local lib include="$CACHE/pkg/usr/include/node" obj="$CACHE/shim.o"
  lib="$(unpack_next_libnode)"
  [ -f "$lib" ] || die "no libnode.so.* in $CACHE/pkg"
  local major minor
  major="$(sed -n 's/^#define V8_MAJOR_VERSION \([0-9]*\)/\1/p' "$include/v8-version.h")"
  minor="$(sed -n 's/^#define V8_MINOR_VERSION \([0-9]*\)/\1/p' "$include/v8-version.h")"
  info "compiling the shim against V8 $major.$minor ($SUITE's headers)"
  # The flags of crates/nimbus-v8/build.rs, with every warning an error.
  g++ -std=c++17 -fno-rtti -Wall -Wextra -Wno-unused-parameter -Werror \
    -I "$include" -c "$SHIM" -o "$obj" || die "the shim does not compile against V8 $major.$minor"
  local needed exported missing
  needed="$(mktemp)"
  exported="$(mktemp)"
  nm -u "$obj" | awk '{print $2}' | grep '^_ZN.*2v8' | sort -u >"$needed" || true
  nm -D --defined-only "$lib" | awk '{print $3}' | sort -u >"$exported"
  missing="$(comm -23 "$needed" "$exported")"
  local count
  count="$(wc -l <"$needed")"
  rm -f "$needed" "$exported"
  [ "$count" -gt 50 ] || die "only $count V8 symbols found in the shim's object: the check is broken"
  if [ -n "$missing" ]; then
    printf '%s\n' "$missing" | c++filt >&2
    die "$(printf '%s\n' "$missing" | wc -l) V8 symbols the shim needs are not in $(basename "$lib")"
  fi
  ok "the shim compiles against V8 $major.$minor without a warning; all $count V8 symbols it needs are in $(basename "$lib")"
}

run_in_root() {
  [ "$(id -u)" -eq 0 ] || die "'run' needs root (debootstrap, chroot, bind mounts)"
  local root="$CACHE/root"
  if [ ! -f "$root/.complete" ]; then
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    rm -rf "$root"
    info "debootstrap $SUITE into $root"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >/dev/null ||
      die "debootstrap failed"
    touch "$root/.complete"
  fi
  # Global, not local: the EXIT trap runs after this function has returned.
  MOUNTS=()
  cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
  }
  trap cleanup EXIT
  bind() { # bind SOURCE TARGET-IN-ROOT
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    MOUNTS+=("$root$2")
  }
  mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
  bind /dev /dev
  bind "${CARGO_HOME:-$HOME/.cargo}" /root/.cargo
  bind "${RUSTUP_HOME:-$HOME/.rustup}" /root/.rustup
  bind "$REPO_ROOT" /repo
  # Names as on the host: resolv.conf for apt, hosts for `localhost` (the e2e tests' fetch).
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/hosts "$root/etc/hosts"
  # Debian's own nodejs is what libnode-dev goes with there: apt installs it as a user would.
  chroot "$root" bash -c 'command -v g++ >/dev/null && [ -f /usr/include/node/v8.h ] ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnode-dev g++ make >/dev/null; }'
  local version
  version="$(chroot "$root" node -p 'process.versions.v8')"
  info "testing on V8 $version (Debian $SUITE's libnode, installed as a package)"
  # The e2e tests' packages (and those of examples/pos, which engines.test.mjs pushes) are
  # plain JavaScript: the host's install serves.
  npm_ci "$REPO_ROOT/tests/e2e" >/dev/null
  npm_ci "$REPO_ROOT/examples/pos" >/dev/null
  chroot "$root" env PATH="/root/.cargo/bin:/usr/bin:/bin" HOME=/root CARGO_TARGET_DIR=/root/target \
    NIMBUS_REQUIRE_V8=1 bash -euc '
      cd /repo
      cargo test --release -p nimbus-v8 -p nimbus-runtime
      cargo build --release -p nimbus
      cd tests/e2e
      NIMBUS_BIN=/root/target/release/nimbus node --test --test-concurrency=1 \
        --test-timeout=300000 limits.test.mjs errors.test.mjs engines.test.mjs code-caches.test.mjs'
  ok "nimbus-v8, nimbus-runtime and the e2e limit, error, engine and code cache tests pass on V8 $version"
}

case "$MODE" in
  headers) check_headers ;;
  run) check_headers && run_in_root ;;
  *) die "usage: $0 [headers|run]" ;;
esac
