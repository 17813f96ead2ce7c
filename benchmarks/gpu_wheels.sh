#!/usr/bin/env bash
# Wheels that `benchmarks/bench_gpu.py` needs on the lent GPU machine (Python 3.12, its own torch and
# transformers, no network), pinned as in requirements.lock.txt, into .whl/ (git-ignored through
# .git/info/exclude; ~16 MiB, within the device tool's 64 MiB). Run here, then on the device:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:src python3 benchmarks/bench_gpu.py --steps 300 --out $OUT/bench_gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
pin() { grep -i "^$1==" requirements.lock.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $(for name in torchtune torchao torchdata omegaconf datasets dill multiprocess llama-models; do pin "$name"; done)
ls -la .whl
