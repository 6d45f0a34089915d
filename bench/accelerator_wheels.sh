#!/usr/bin/env bash
# Download, here, the wheels the GPU device image lacks for bench/accelerator.py, into .whl/
# (ignored by git; the device tool carries it with `carry: [".whl"]`). Nothing is fetched
# on the device. The image (see the device README) runs Python 3.12 on x86-64 and already
# has jax with CUDA, flax, optax, orbax-checkpoint, tensorstore, absl-py, etils, cloudpickle,
# protobuf, psutil, pyyaml, packaging, pytest; it lacks these (jshear imports grain via the
# data loader and ml_collections via the configs; tensorboardX is the metrics writer's):
#   grain (+ array-record, portpicker), ml-collections, tensorboardX
# Versions: requirements.txt's pins, and the venv's resolved versions of grain's deps.
#
#   bash bench/accelerator_wheels.sh        # then see README "Accelerator check"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=.whl
pin() { grep -E "^$1==" requirements.txt | cut -d= -f3; }
WHEELS=(
  "grain==$(pin grain)"
  "array-record==0.8.6"
  "portpicker==1.6.0"
  "ml-collections==$(pin ml-collections)"
  "tensorboardX==$(pin tensorboardX)"
)
mkdir -p "$DEST"
# One version of each: pip stops the whole install on two.
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any \
  -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
