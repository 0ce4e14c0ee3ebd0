#!/usr/bin/env bash
# The wheels an offline GPU machine needs beyond what it has, fetched here (where pip reaches
# PyPI) into .whl/ for scripts/gpu_check.sh to install with `pip install --no-index`.
#   scripts/gpu_wheels.sh                 # for Python 3.12 (PY_VERSION=3.11 ... for another)
# The machine this is for has torch, matplotlib, scipy, pandas, pyarrow and xxhash but not
# datasets, evaluate, dill or multiprocess; timm, accelerate and fsspec come along too (all pure
# Python, 4.5 MB together), in the versions installed here, so both machines run the same code
# (fsspec: datasets accepts only versions up to its own pin).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/find_python.sh
PY_VERSION=${PY_VERSION:-3.12}
wanted=$("$PYTHON" -c 'from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("datasets", "evaluate", "dill", "multiprocess", "timm", "accelerate", "fsspec")))')
rm -rf .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $wanted
ls -l .whl
