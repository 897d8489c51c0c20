#!/usr/bin/env bash
# Installs pesf_ext on a fresh Debian/Ubuntu machine: the Fashion-MNIST Debian package (apt lists updated first),
# then torch, torchvision and this package with pip. Works as root (containers: no sudo needed) and as a user with
# sudo; without either, it skips the Debian package (the loader then downloads Fashion-MNIST through torchvision).
#
#   bash tools/setup.sh          # what the quickstart needs
#   bash tools/setup.sh test     # + the extras the tests use ('.[test,nlp,plots]', as CI)
#
# A machine without internet whose Python already has torch, torchvision, transformers, numpy, scipy and
# scikit-learn (a GPU image) gets the rest in two steps, no apt and no torch involved:
#
#   bash tools/setup.sh wheels [--dry-run]   # on a machine with the package index: the wheels into .whl/
#   bash tools/setup.sh offline              # on the machine without internet, in the clone with .whl/ copied in
#
# `wheels` downloads torchdistill without its dependencies (it declares torch>=2.12; the image's torch is kept)
# and the pure-Python packages in EXTRA_WHEELS (default none: what pesf_ext and the GPU check import beyond such
# an image is torchdistill alone), plus setuptools into .whl/build (to build pesf_ext there if the
# image has no build tools); only pure-Python wheels (*-none-any.whl) are kept, a few MiB in all. --dry-run
# prints the commands instead. `offline` installs .whl/*.whl with --no-index --no-deps, then this project with
# --no-deps (no index, torch left alone), then checks that `import pesf_ext` works.
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

TORCHDISTILL=torchdistill==1.1.5
EXTRA_WHEELS=${EXTRA_WHEELS:-}
BUILD_WHEELS="setuptools>=70.1"   # builds wheels itself (bdist_wheel), no dependencies
MAX_WHEELS_MIB=48   # what a machine without internet may be handed in one upload, with room for the clone

wheels() {
  local dry=""
  if [ "${1:-}" = "--dry-run" ]; then dry="echo"; fi
  $dry rm -rf .whl
  $dry mkdir -p .whl/build
  # shellcheck disable=SC2086  # EXTRA_WHEELS and BUILD_WHEELS are lists
  $dry "$PYTHON" -m pip download --no-deps --only-binary=:all: -d .whl "$TORCHDISTILL" $EXTRA_WHEELS
  # shellcheck disable=SC2086
  $dry "$PYTHON" -m pip download --no-deps --only-binary=:all: -d .whl/build $BUILD_WHEELS
  if [ -n "$dry" ]; then return 0; fi
  local bad
  bad=$(ls .whl/*.whl .whl/build/*.whl | grep -v -- '-none-any\.whl$' || true)
  if [ -n "$bad" ]; then
    echo "setup.sh wheels: not pure-Python (the machine without internet may differ in platform): $bad" >&2
    exit 1
  fi
  local mib
  mib=$(du -sm .whl | cut -f1)
  if [ "$mib" -gt "$MAX_WHEELS_MIB" ]; then
    echo "setup.sh wheels: .whl/ holds $mib MiB, more than $MAX_WHEELS_MIB MiB" >&2
    exit 1
  fi
  ls .whl/*.whl .whl/build/*.whl
  echo "setup.sh wheels: $mib MiB in .whl/; copy the clone with it to the machine, then run: bash tools/setup.sh offline"
}

offline() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "setup.sh offline: no wheels in .whl/; run 'bash tools/setup.sh wheels' on a machine with the package" \
      "index first and copy .whl/ here" >&2
    exit 1
  fi
  "$PYTHON" -m pip install --no-index --no-deps .whl/*.whl
  # the image's own setuptools when it can build a wheel; else setuptools from .whl/build, in pip's
  # isolated build environment (the image's packages untouched)
  "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation . \
    || { echo "setup.sh offline: (the above: this Python's setuptools cannot build wheels) building with .whl/build's"
         "$PYTHON" -m pip install --no-index --no-deps --find-links .whl/build .; }
  local check="import pesf_ext, torch, torchdistill as td; print(f'setup.sh offline: pesf_ext ready (torch"
  check+=" {torch.__version__}, torchdistill {td.__version__})')"
  if ! "$PYTHON" -c "$check"; then
    echo "setup.sh offline: 'import pesf_ext' failed (above): add the missing pure-Python package to" \
      "EXTRA_WHEELS when running 'bash tools/setup.sh wheels'" >&2
    exit 1
  fi
}

case "${1:-}" in
  wheels) wheels "${2:-}"; exit 0 ;;
  offline) offline; exit 0 ;;
esac

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
