#!/usr/bin/env bash
# Wheels for the GPU check (benchmarks/gpu_check.sh --wheels DIR), made on a connected machine.
#
#   bash benchmarks/gpu_wheels.sh DIR [--have LIST] [--python-version 3.12] [--platform TAG ...]
#
# DIR gets only what the GPU machine lacks: each requirement of the project (with its test extras)
# that LIST does not satisfy, followed through their own requirements (every specifier met at
# once), one version of each; never torch, torchvision, torchaudio, triton or nvidia-* (the check
# uses the CUDA build installed there). LIST: names, name==version or `pip list` output of the GPU
# machine (default benchmarks/gpu_machine_packages.txt, the lent H200's image; no machine needs to
# start to learn it). Target: CPython 3.12 on manylinux x86_64 unless told otherwise
# (--python-version native: this interpreter's). DIR/SOURCE.txt records the checkout's revision.
# Then: carry DIR to the GPU machine with the checkout; run benchmarks/gpu_check.sh --wheels DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
case "${1:-}" in
  ""|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | cut -c3-; [ $# -ge 1 ] && exit 0; exit 2 ;;
esac
exec "$PY" "$ROOT/benchmarks/gpu_wheels.py" "$@"
