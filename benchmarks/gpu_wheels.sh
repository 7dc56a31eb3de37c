#!/usr/bin/env bash
# Wheels for the GPU check (benchmarks/gpu_check.sh --wheels DIR), made on a connected machine.
#
#   1. on the GPU machine:   python -m pip list --format=freeze > gpu-pip-list.txt
#   2. here (connected):     benchmarks/gpu_wheels.sh DIR --have gpu-pip-list.txt \
#                                [--python-version 3.11 --platform manylinux2014_x86_64]
#   3. copy DIR and this checkout there; run benchmarks/gpu_check.sh --wheels DIR
#
# DIR gets only what the GPU machine lacks: the project's wheel and each requirement (with the
# test extras) that its pip list does not satisfy, followed through their own requirements; never
# torch, torchvision, triton or nvidia-* (the check uses the CUDA build installed there). Give
# --python-version/--platform when the GPU machine's Python or platform differ from this one's
# (then only binary wheels are taken). Without --have, everything but the torch family is fetched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
exec "$PY" "$ROOT/benchmarks/gpu_wheels.py" "$@"
