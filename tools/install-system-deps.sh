#!/usr/bin/env bash
# Install the system tools that sciops.fleet's build steps and tests use, when they are missing.
# Debian/Ubuntu as root: installs them with apt-get. Elsewhere: says what to install and fails.
set -euo pipefail

# command -> Debian package
declare -A WANT=(
  [docker-registry]=docker-registry
  [rpm]=rpm
  [rpmbuild]=rpm
  [rpmsign]=rpm
  [gpg]=gnupg
  [gpgconf]=gnupg
  [mksquashfs]=squashfs-tools
  [unsquashfs]=squashfs-tools
  [createrepo_c]=createrepo-c
  [systemd-nspawn]=systemd-container
  [machinectl]=systemd-container
  [systemd-analyze]=systemd
  [systemd-escape]=systemd
  [debootstrap]=debootstrap
  [htpasswd]=apache2-utils
  [rpmlint]=rpmlint
  [squashfuse]=squashfuse
  [fusermount3]=fuse3
  [patchelf]=patchelf
  [zstd]=zstd
  [gcc]=gcc
  [ldd]=libc-bin
  [readelf]=binutils
  [openssl]=openssl
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [ip]=iproute2
  [make]=make
  [git]=git
  [shellcheck]=shellcheck
  [skopeo]=skopeo
  [curl]=curl
  [chromium]=chromium
)

missing_pkgs=()
missing_cmds=()
for cmd in "${!WANT[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing_cmds+=("$cmd")
    missing_pkgs+=("${WANT[$cmd]}")
  fi
done
# A statically linked busybox: the test machines' root file system is that one program (a dynamic busybox, which
# many systems have, would need its libraries in the image).
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
  missing_cmds+=("busybox (static)")
  missing_pkgs+=(busybox-static)
fi
# python3-venv provides ensurepip for `python3 -m venv`.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing_cmds+=("python3 -m venv")
  missing_pkgs+=(python3-venv)
fi

if [ ${#missing_pkgs[@]} -eq 0 ]; then
  echo "system tools: all present"
  exit 0
fi

mapfile -t pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
echo "system tools missing: ${missing_cmds[*]}"

if [ "$(id -u)" -ne 0 ]; then
  echo "error: not root. Install these packages as root (Debian/Ubuntu):" >&2
  echo "  apt-get update && apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here (not Debian/Ubuntu). Install the equivalents of these Debian packages:" >&2
  echo "  ${pkgs[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${pkgs[@]}"
echo "system tools: installed ${pkgs[*]}"
