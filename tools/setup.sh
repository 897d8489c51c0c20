#!/usr/bin/env bash
# Installs pesf_ext on a fresh Debian/Ubuntu machine: the Fashion-MNIST Debian package (apt lists updated first),
# then torch, torchvision and this package with pip. Works as root (containers: no sudo needed) and as a user with
# sudo; without either, it skips the Debian package (the loader then downloads Fashion-MNIST through torchvision).
#
#   bash tools/setup.sh          # what the quickstart needs
#   bash tools/setup.sh test     # + the extras the tests use ('.[test,nlp,plots]', as CI)
#
# PYTHON picks the interpreter (default: python, else python3); FASHION_MNIST_DIR where the package puts the data.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -z "$PYTHON" ]; then
  echo "setup.sh: no python or python3 on PATH; install Python >= 3.10 with pip first" >&2
  exit 1
fi

if ls "$DATA_DIR"/*.gz >/dev/null 2>&1; then
  echo "setup.sh: Fashion-MNIST already in $DATA_DIR"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO=$(command -v sudo || true)
  fi
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    echo "setup.sh: not root and no sudo: skipping apt-get install dataset-fashion-mnist" \
      "(the loader will download Fashion-MNIST instead)" >&2
  else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
  fi
fi

target="."
if [ "${1:-}" = "test" ]; then
  target=".[test,nlp,plots]"
fi
"$PYTHON" -m pip install torch torchvision -e "$target"
