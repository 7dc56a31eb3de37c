#!/usr/bin/env bash
# Create or reuse .venv in this checkout and install medfm-bench into it (idempotent).
# torch/torchvision are pinned first so pip takes the local wheels instead of a multi-GB download.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.medfm-installed
want=$(cat pyproject.toml examples/bench-plugin-example/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch, torchvision" 2>/dev/null \
    || .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
  .venv/bin/python -m pip install -q -e ".[test,docs,tracking]"
  .venv/bin/python -m pip install -q --no-deps "clip-benchmark>=1.6"  # the test-zeroshot extra, without its retrieval deps
  if [ -d examples/bench-plugin-example ]; then
    .venv/bin/python -m pip install -q -e examples/bench-plugin-example
  fi
  echo "$want" > "$stamp"
fi
