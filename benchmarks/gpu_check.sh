#!/usr/bin/env bash
# The GPU check, on a machine without network: run from the repository root.
#   bash benchmarks/gpu_check.sh OUT [gpu_check options]
# Wheels for what the machine lacks (nibabel, packaging, scipy) may lie in ./.whl/; they are
# unpacked onto PYTHONPATH, and neoseg itself is imported from this checkout (no install).
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT [options]}
shift
repo=$(pwd)
shim=$(mktemp -d)
mkdir "$shim/neoseg"
for d in core data train export runtime cli benchmarks; do ln -s "$repo/$d" "$shim/neoseg/$d"; done
for whl in "$repo"/.whl/*.whl; do
  [ -e "$whl" ] || continue
  python3 -m zipfile -e "$whl" "$shim/"
done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import numpy, scipy, nibabel, onnxruntime, torch" || {
  echo "missing a dependency above: put its wheel in .whl/ and carry it" >&2; exit 3; }
mkdir -p "$out"
python3 -m neoseg.benchmarks.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu-check.log"
