#!/usr/bin/env bash
# The GPU check: one prepared script, under 8 minutes on one GPU, no network (a cluster's compute node).
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--python PY] [driver options, see gpu_check.py --help]
#
# Uses the torch already installed for PY (default: python3). With --wheels DIR, the project and
# whatever else it lacks are installed from DIR (made beforehand on a connected machine by
# benchmarks/gpu_wheels.sh DIR) with pip --no-index, into a venv that also sees PY's packages
# ($GPU_CHECK_VENV, default $TMPDIR/medfm-bench-gpu-check). Without --wheels, PY must already have
# the dependencies. Data: the bundled BreastMNIST file; weights: random. Prints a summary; every
# figure goes to benchmarks/gpu_check.csv (--out CSV). Dry run without a GPU: --device cpu --tiny.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=python3
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | cut -c3-; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
cd "$ROOT"
# nothing may reach a network: hubs offline, pip without an index
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export BENCH_PROBE_TIMEOUT="${BENCH_PROBE_TIMEOUT:-1}" TQDM_DISABLE=1
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_check: $PY has no torch; pass --python with the one that has it" >&2; exit 2; }
if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || { echo "gpu_check: --wheels $WHEELS is not a folder (make it with benchmarks/gpu_wheels.sh)" >&2; exit 2; }
  # a venv that also sees PY's packages (torch and its CUDA libraries, pip) through a .pth file,
  # whether PY is a system, conda or venv Python; only what is missing is installed into it
  VENV="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/medfm-bench-gpu-check}"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --without-pip "$VENV"
  VSITE="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  "$PY" -c "import site, sysconfig; p = sysconfig.get_paths(); print(chr(10).join(dict.fromkeys(
      site.getsitepackages() + [site.getusersitepackages(), p['purelib'], p['platlib']])))" > "$VSITE/_gpu_check_parent.pth"
  if ls "$WHEELS"/medfm_bench-*.whl >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "medfm-bench[test]"
  else  # no project wheel in the folder: this checkout, with the build backend PY has
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-build-isolation -e ".[test]"
  fi
  PY="$VENV/bin/python"
fi
"$PY" -c "import torch, timm, medmnist, pytest" || { echo "gpu_check: dependencies missing for $PY; use --wheels DIR" >&2; exit 2; }
exec "$PY" benchmarks/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
