#!/usr/bin/env bash
# Check that tools/install-system-deps.sh alone makes a fresh Debian 12 machine ready for `make test`:
# a clean bookworm tree (debootstrap --variant=minbase), the script run in it with chroot, then `command -v`
# for every program of the script's WANT table inside that tree.
#
#   sudo tools/check-fresh-machine.sh [--keep]
#
# Root on Debian. Not part of CI (it downloads and installs a few hundred MB: minutes). The clean tree is
# built once and kept in ~/.cache/sciops-fleet/ (or $SCIOPS_FLEET_CACHE), beside the test nodes' root;
# every run works on a copy of it, removed at the end (--keep leaves the copy and prints its path).
# The Debian mirror is the one this host's apt uses (/etc/apt/sources.list*), or $SCIOPS_FLEET_MIRROR.
# Time limits: CHECK_DEBOOTSTRAP_TIMEOUT (default 900 s) and CHECK_INSTALL_TIMEOUT (default 1800 s).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INSTALL_SCRIPT="$HERE/install-system-deps.sh"
SUITE=bookworm
KEEP=0
if [ "${1:-}" = "--keep" ]; then KEEP=1; fi
DEBOOTSTRAP_TIMEOUT="${CHECK_DEBOOTSTRAP_TIMEOUT:-900}"
INSTALL_TIMEOUT="${CHECK_INSTALL_TIMEOUT:-1800}"
CACHE="${SCIOPS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sciops-fleet}"
CLEAN="$CACHE/fresh-$SUITE-minbase"
STARTED=$SECONDS

say() { echo "check-fresh-machine: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run it as root (debootstrap and chroot need root)"
for tool in debootstrap chroot timeout findmnt; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing; run tools/install-system-deps.sh first"
done

# The first Debian archive URI of the host's apt sources (one-line or deb822 format).
host_mirror() {
  local files=()
  if [ -f /etc/apt/sources.list ]; then files+=(/etc/apt/sources.list); fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    if [ -f "$f" ]; then files+=("$f"); fi
  done
  if [ ${#files[@]} -eq 0 ]; then return 0; fi
  cat "${files[@]}" | sed -n \
    -e 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]]*$/\1/p' \
    -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]].*/\2/p' \
    | awk 'NR == 1 { print }'
}
MIRROR="${SCIOPS_FLEET_MIRROR:-$(host_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$CACHE"
exec 9>"$CLEAN.lock"
flock 9

if [ ! -f "$CLEAN/.sciops-clean-complete" ]; then
  say "building a clean $SUITE tree (debootstrap --variant=minbase, mirror $MIRROR); once per cache"
  rm -rf "$CLEAN" "$CLEAN.building"
  if ! timeout "$DEBOOTSTRAP_TIMEOUT" debootstrap --variant=minbase "$SUITE" "$CLEAN.building" "$MIRROR" \
      >"$CACHE/fresh-debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE/fresh-debootstrap.log" >&2
    rm -rf "$CLEAN.building"
    die "debootstrap failed or took more than ${DEBOOTSTRAP_TIMEOUT}s (log: $CACHE/fresh-debootstrap.log)"
  fi
  touch "$CLEAN.building/.sciops-clean-complete"
  mv "$CLEAN.building" "$CLEAN"
  say "clean tree ready after $((SECONDS - STARTED))s"
else
  say "reusing the clean tree $CLEAN"
fi

WORK="$(mktemp -d "$CACHE/fresh-check-XXXXXX")"
ROOT="$WORK/root"
MOUNTED=()
cleanup() {
  local rc=$? i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || say "could not unmount ${MOUNTED[$i]}"
  done
  if [ "$KEEP" -eq 1 ]; then
    say "kept the checked tree at $ROOT"
  elif findmnt -rn -o TARGET | grep -q "^$ROOT"; then
    say "not removing $WORK: something is still mounted under it (findmnt | grep $ROOT)"
  else
    rm -rf "$WORK"
  fi
  say "done in $((SECONDS - STARTED))s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -a "$CLEAN" "$ROOT"
rm -f "$ROOT/.sciops-clean-complete"

bind() {  # bind SOURCE TARGET_IN_ROOT
  mount --bind "$1" "$ROOT$2"
  MOUNTED+=("$ROOT$2")
}
mount -t proc proc "$ROOT/proc"
MOUNTED+=("$ROOT/proc")
bind /dev /dev
bind /dev/pts /dev/pts

# The host's apt sources (and the keyrings they name), so that the tree uses the same mirror as the host.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  mkdir -p "$ROOT$(dirname "$f")"
  cp "$f" "$ROOT$f"
  sed -n 's/^Signed-By:[[:space:]]*\(\/.*\)$/\1/p; s/.*signed-by=\([^] ]*\).*/\1/p' "$f" | while read -r key; do
    if [ -f "$key" ] && [ ! -e "$ROOT$key" ]; then
      mkdir -p "$ROOT$(dirname "$key")"
      cp "$key" "$ROOT$key"
    fi
  done
done
# Proxy settings of the host's apt are how it reaches the mirror; nothing else of its configuration.
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  if [ -f "$f" ] && grep -qi 'proxy' "$f"; then cp "$f" "$ROOT$f"; fi
done
# No daemon of an installed package starts inside the tree.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"

mirror_host="$(echo "$MIRROR" | sed -n 's#^[a-z]*://\([^/:]*\).*#\1#p')"
if [ -n "$mirror_host" ] && ! chroot "$ROOT" getent hosts "$mirror_host" >/dev/null 2>&1; then
  say "$mirror_host does not resolve inside the tree: binding the host's /etc/resolv.conf"
  touch "$ROOT/etc/resolv.conf"
  bind /etc/resolv.conf /etc/resolv.conf
fi

cp "$INSTALL_SCRIPT" "$ROOT/root/install-system-deps.sh"
say "running tools/install-system-deps.sh in the clean tree (at most ${INSTALL_TIMEOUT}s)"
install_started=$SECONDS
if ! timeout "$INSTALL_TIMEOUT" chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 bash /root/install-system-deps.sh >"$WORK/install.log" 2>&1; then
  tail -n 30 "$WORK/install.log" >&2
  KEEP=1
  die "tools/install-system-deps.sh failed in the clean tree (log: $WORK/install.log)"
fi
grep '^system tools' "$WORK/install.log" >&2 || true
say "install took $((SECONDS - install_started))s"

# Every program of the WANT table, looked up inside the tree.
mapfile -t wanted < <(sed -n 's/^[[:space:]]*\[\([^]]*\)\]=\([^[:space:]]*\)[[:space:]]*$/\1 \2/p' "$INSTALL_SCRIPT")
[ ${#wanted[@]} -gt 0 ] || die "no WANT entries found in $INSTALL_SCRIPT"
missing=0
for entry in "${wanted[@]}"; do
  cmd="${entry%% *}"
  pkg="${entry#* }"
  if found="$(chroot "$ROOT" /bin/sh -c "command -v '$cmd'")"; then
    printf '  ok       %-18s %-18s %s\n' "$cmd" "$pkg" "$found"
  else
    printf '  MISSING  %-18s %-18s\n' "$cmd" "$pkg"
    missing=$((missing + 1))
  fi
done
if chroot "$ROOT" python3 -c 'import ensurepip' 2>/dev/null; then
  printf '  ok       %-18s %-18s\n' "python3 -m venv" python3-venv
else
  printf '  MISSING  %-18s %-18s\n' "python3 -m venv" python3-venv
  missing=$((missing + 1))
fi
# A second run finds everything and installs nothing.
again="$(chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin bash /root/install-system-deps.sh 2>&1 || true)"
say "second run: $again"

if [ "$missing" -ne 0 ]; then
  die "$missing program(s) of the WANT table are missing after tools/install-system-deps.sh on a fresh $SUITE"
fi
[ "$again" = "system tools: all present" ] || die "a second run of tools/install-system-deps.sh did not find everything"
say "fresh $SUITE: tools/install-system-deps.sh installs all ${#wanted[@]} programs of its table"
