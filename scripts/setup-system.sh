#!/usr/bin/env bash
# Installs the system packages a machine without a GPU needs to run WebGPU:
# Mesa's lavapipe (software Vulkan) from bookworm-backports, since bookworm's own
# Mesa 22 is too old for Dawn, and Debian's Chromium for the browser tests.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

need=()
[ -f /usr/share/vulkan/icd.d/lvp_icd.json ] || need+=(mesa)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(uname -s)" != Linux ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: not a Debian-like Linux; install a Vulkan driver and Chromium yourself (missing: ${need[*]})" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
if [ "$codename" = bookworm ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
pkgs=()
for n in "${need[@]}"; do
  case "$n" in
    mesa)
      if [ "$codename" = bookworm ]; then
        $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
      else
        pkgs+=(mesa-vulkan-drivers libvulkan1)
      fi ;;
    chromium) pkgs+=(chromium) ;;
  esac
done
[ ${#pkgs[@]} -eq 0 ] || $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
echo "setup-system: installed ${need[*]}"
