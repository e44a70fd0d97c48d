#!/usr/bin/env bash
# Makes Debian's V8 (the shared library libnode and its headers) available to the build, and
# prints the directory to give it as NIMBUS_LIBNODE_DIR (a root holding usr/include/node and
# usr/lib/<triplet>/libnode.so).
#
# Two cases, both handled:
# - Debian's own nodejs is installed (or can be): `apt-get install libnode-dev` works, and the
#   answer is "/" (the system's headers and library).
# - Node.js comes from elsewhere (NodeSource, as on our CI machines): installing libnode108
#   fails, because its dependency node-acorn wants Debian's nodejs. Then the packages are
#   downloaded (`apt-get download`) and unpacked (`dpkg -x`) into a cache directory, with
#   libuv1 and libc-ares2, the two libraries it needs that such machines lack, and the
#   cache's library directory is given to the dynamic loader (/etc/ld.so.conf.d/ and
#   ldconfig, as root or through sudo). No package is installed.
#
# Why the loader's configuration and not an rpath: Cargo passes link arguments of a library
# crate's build script only to that crate's own binaries, not to the server or the tests of
# the crates above it.
#
# Environment:
#   NIMBUS_LIBNODE_CACHE  where to unpack (default $HOME/.cache/nimbus-libnode)
#   LIBNODE_PACKAGES      the packages (default "libnode108 libnode-dev libuv1 libc-ares2";
#                         Debian 13 has libnode115)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE="${NIMBUS_LIBNODE_CACHE:-$HOME/.cache/nimbus-libnode}"
TRIPLET="$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"

has_libnode() { # has_libnode ROOT
  [ -f "$1/usr/include/node/v8.h" ] && [ -e "$1/usr/lib/$TRIPLET/libnode.so" ]
}

if has_libnode /; then
  echo /
  exit 0
fi
# register_loader DIR : makes DIR's usr/lib/<triplet> one of the dynamic loader's directories.
register_loader() {
  local lib="$1/usr/lib/$TRIPLET" conf=/etc/ld.so.conf.d/nimbus-libnode.conf sudo=""
  if ldconfig -p 2>/dev/null | grep -qF "$lib/libnode.so."; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
      die "cannot register $lib with the dynamic loader without root; set LD_LIBRARY_PATH=$lib instead"
    sudo="sudo"
  fi
  printf '%s\n' "$lib" | $sudo tee "$conf" >/dev/null
  $sudo ldconfig
  info "registered $lib with the dynamic loader ($conf)" >&2
}

if has_libnode "$CACHE" && [ -f "$CACHE/.complete" ]; then
  register_loader "$CACHE"
  echo "$CACHE"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "V8 needs Debian's libnode-dev (or NIMBUS_LIBNODE_DIR); apt-get not found"
# A system whose nodejs is Debian's own takes the package directly: when apt can install it
# without removing anything (never replace the machine's Node.js).
if simulated="$(apt-get install -s libnode-dev 2>/dev/null)" && ! grep -q '^Remv' <<<"$simulated"; then
  apt_install libnode-dev >&2
  has_libnode / && { echo /; exit 0; }
fi

PACKAGES="${LIBNODE_PACKAGES:-libnode108 libnode-dev libuv1 libc-ares2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
info "downloading $PACKAGES" >&2
# apt-get download as root writes as the _apt user: give it a directory it may write to.
chmod 777 "$work"
if ! (cd "$work" && apt-get download $PACKAGES >/dev/null 2>&1); then
  info "apt-get update" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >&2; else sudo apt-get update -qq >&2; fi
  (cd "$work" && apt-get download $PACKAGES >&2) || die "apt-get download $PACKAGES failed"
fi
rm -rf "$CACHE.tmp"
mkdir -p "$CACHE.tmp"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$CACHE.tmp"
done
has_libnode "$CACHE.tmp" || die "the packages hold no usr/include/node/v8.h and usr/lib/$TRIPLET/libnode.so"
touch "$CACHE.tmp/.complete"
rm -rf "$CACHE"
mv "$CACHE.tmp" "$CACHE"
info "V8 (libnode) unpacked into $CACHE ($(du -sh "$CACHE" | cut -f1))" >&2
register_loader "$CACHE"
echo "$CACHE"
