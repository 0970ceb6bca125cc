#!/usr/bin/env bash
# Installs everything Pathline needs: Debian's packages (build tools and libraries) and, into the
# project's own virtual environment .venv/ (git-ignored), the pinned PyTorch whose LibTorch the
# build links, and the peers the benchmarks and conformance tests compare against
# (tools/python-requirements.txt, the one place the pins live). Idempotent: a second run downloads
# and installs nothing. Used by the README's commands and by .ci/run.
#   PATHLINE_VENV=DIR   another place for the virtual environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libboost-dev libboost-program-options-dev
  libtomlplusplus-dev libgtest-dev clang-format
  libstb-dev libcairo2-dev fonts-dejavu-core nlohmann-json3-dev
  zlib1g-dev dataset-fashion-mnist
  python3 python3-venv python3-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages already installed"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The virtual environment, made with Debian's python3 (not a pyenv or conda one on PATH), so that
# the build and the tests find the same interpreter on every machine.
venv="${PATHLINE_VENV:-.venv}"
requirements=tools/python-requirements.txt
stamp="$venv/.pathline-requirements"
want="$(/usr/bin/python3 --version 2>&1) $(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install-deps: $venv already holds $(grep -m1 '^torch==' "$requirements") and the other pinned packages"
  exit 0
fi
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
echo "install-deps: installing the pinned Python packages into $venv (torch with its CUDA libraries: about 5 GB)"
start=$(date +%s)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
echo "install-deps: Python packages installed in $(($(date +%s) - start)) s ($(du -sh "$venv" | cut -f1) in $venv)"
echo "$want" >"$stamp"
