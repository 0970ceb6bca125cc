#!/usr/bin/env bash
# Installs everything Pathline needs from Debian's packages. Idempotent: a second run
# installs nothing new. Used by the README's commands and by .ci/run.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp
  libboost-dev libboost-program-options-dev
  libtomlplusplus-dev libfmt-dev libgtest-dev
  python3-numpy clang-format
  libstb-dev libcairo2-dev fonts-dejavu-core nlohmann-json3-dev
  zlib1g-dev dataset-fashion-mnist
  libgloo-dev python3-torch
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
