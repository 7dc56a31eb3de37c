#!/usr/bin/env bash
# The GPU check: one prepared script, under 8 minutes on one GPU, no network (a cluster's compute node).
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [--python PY] [--total-s 450] [driver options]
#
# Uses the torch already installed for PY (default: python3). With --wheels DIR (made beforehand on a
# connected machine: bash benchmarks/gpu_wheels.sh DIR), DIR's wheels are installed offline (pip
# --no-index --no-deps, into a folder of their own put on PYTHONPATH; one at a time where all at once
# fails); the project runs from this checkout. A failed install is a row and the check goes on; a
# backbone whose library is missing becomes a 'skipped' row. The driver (benchmarks/gpu_check.py
# --help) runs under a hard timeout so that installation, driver and summary end within --total-s
# seconds; it rewrites the CSV after every row. In --out (default: $OUT when set, else
# $TMPDIR/medfm-bench-gpu-check): gpu_check.csv, summary.txt, gpu_check.log, pytest.log, install.csv.
# The summary is printed last, also when steps fail. Dry run without a GPU: --device cpu --tiny.
set -uo pipefail  # no -e: a failing step is a row, never the end of the check
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T0=$SECONDS
PY=python3
WHEELS=""
OUTDIR="${OUT:-${TMPDIR:-/tmp}/medfm-bench-gpu-check}"
TOTAL=450
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --out) OUTDIR="${2:?--out needs a folder}"; shift 2 ;;
    --total-s) TOTAL="${2:?--total-s needs seconds}"; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | cut -c3-; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$TOTAL" in ''|*[!0-9]*) echo "gpu_check: --total-s $TOTAL: not a whole number of seconds" >&2; exit 2 ;; esac
cd "$ROOT" || exit 2
mkdir -p "$OUTDIR" 2>/dev/null || { echo "gpu_check: --out $OUTDIR: cannot create it" >&2; exit 2; }
OUTDIR="$(cd "$OUTDIR" && pwd)"
CSV="$OUTDIR/gpu_check.csv" LOG="$OUTDIR/gpu_check.log" ROWS="$OUTDIR/install.csv"
rm -f "$CSV" "$OUTDIR/summary.txt" "$OUTDIR/pytest.log"
: > "$LOG"
NOW="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
GIT="$(git -C "$ROOT" describe --always --dirty --abbrev=12 2>/dev/null ||
       sed -n '1s/^git \(.*\)/\1 (wheels)/p' "${WHEELS:-/nonexistent}/SOURCE.txt" 2>/dev/null)"
GIT="${GIT:-unknown}"
ROWFILE="$ROWS"
q() { local s="${1//$'\n'/ }"; s="${s//\"/\"\"}"; printf '"%s"' "${s:0:300}"; }
row() {  # benchmark context metric value [note]: one CSV row, in results.csv's columns plus a note
  printf '%s,%s,%s,%s,%s,%s,%s\n' "$NOW" "$(q "$GIT")" "$(q "$1")" "$(q "$2")" "$(q "$3")" "$4" "$(q "${5:-}")" >>"$ROWFILE"
}
say() { echo "gpu_check: $*"; echo "gpu_check: $*" >>"$LOG"; }
lastline() { grep -v '^[[:space:]]*$' "$LOG" | tail -n1 | cut -c1-250; }
TIMEOUT=(); command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout --kill-after=5)
limited() {  # seconds command...: the command, stopped after that long where `timeout` exists
  local s="$1"; shift
  if [ ${#TIMEOUT[@]} -gt 0 ]; then "${TIMEOUT[@]}" "$s" "$@"; else "$@"; fi
}
printf 'date,git,benchmark,context,metric,value,note\n' >"$ROWS"

# nothing may reach a network: hubs offline, pip without an index
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
       PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export BENCH_PROBE_TIMEOUT="${BENCH_PROBE_TIMEOUT:-1}"

# 1. the interpreter and its torch
TORCH=1
if ! limited 120 "$PY" -c "import torch; print('gpu_check: torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
     >>"$LOG" 2>&1 </dev/null; then
  TORCH=0
  row install "$PY" missing 0 "no working torch for $PY (pass --python with the one that has it): $(lastline)"
fi

# 2. the wheels: no dependency resolution here, as the folder holds exactly what the machine lacks
# (gpu_wheels.py resolved it against its package list) and grad-cam's opencv-python is there as
# opencv-python-headless (the same cv2)
SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/medfm-bench-gpu-site}"
install_wheels() {
  if [ ! -d "$WHEELS" ]; then
    row install "--wheels $WHEELS" failed 0 "not a folder (make it with benchmarks/gpu_wheels.sh DIR)"; return
  fi
  local whls=() w ok=0
  for w in "$WHEELS"/*.whl; do
    [ -e "$w" ] || continue
    case "$(basename "$w")" in medfm_bench-*) ;; *) whls+=("$w") ;; esac  # the project: this checkout
  done
  if [ ${#whls[@]} -eq 0 ]; then row install "--wheels $WHEELS" failed 0 "no wheels in the folder"; return; fi
  rm -rf "$SITE" && mkdir -p "$SITE" || { row install "$SITE" failed 0 "cannot create the folder"; return; }
  local pip=("$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile --no-cache-dir
             --upgrade --target "$SITE")
  echo "+ ${pip[*]} DIR/*.whl (${#whls[@]} wheels)" >>"$LOG"
  if limited 180 "${pip[@]}" "${whls[@]}" >>"$LOG" 2>&1 </dev/null; then
    row install "${#whls[@]} wheels from $WHEELS (pip --no-index --no-deps)" ok 1 \
        "$(for w in "${whls[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
  else
    row install "all ${#whls[@]} wheels at once" failed 0 "$(lastline); then one at a time"
    for w in "${whls[@]}"; do
      if [ $((SECONDS - T0)) -gt $((TOTAL / 3)) ]; then
        row install "$(basename "$w")" failed 0 "not tried: the installation is past a third of --total-s"; continue
      fi
      if limited 60 "${pip[@]}" "$w" >>"$LOG" 2>&1 </dev/null; then ok=$((ok + 1))
      else row install "$(basename "$w")" failed 0 "$(lastline)"; fi
    done
    row install "$ok of ${#whls[@]} wheels, one at a time" ok "$ok"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}
if [ -n "$WHEELS" ] && [ $TORCH = 1 ]; then install_wheels; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
row install "medfm-bench" ok 1 "from the checkout $ROOT (on PYTHONPATH)"

# 3. what imports (a missing library is a row; the backbones that need it are skipped later)
if [ $TORCH = 1 ]; then
  if limited 120 "$PY" - >"$OUTDIR/.imports" 2>>"$LOG" <<'EOF'
import importlib
for mod in ("torch", "torchvision", "timm", "transformers", "peft", "open_clip", "segment_anything", "medmnist",
            "pytorch_grad_cam", "pandas", "sklearn", "yaml", "pytest", "pytest_timeout", "bench.cli", "backbones"):
    try:
        m = importlib.import_module(mod)
        print(f"ok\t{mod}\t{getattr(m, '__version__', '')}")
    except BaseException as e:
        print(f"missing\t{mod}\t{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
EOF
  then
    row install "imports" ok 1 "$(awk -F'\t' '$1 == "ok" {printf "%s %s; ", $2, $3}' "$OUTDIR/.imports")"
    while IFS=$'\t' read -r status mod why; do
      [ "$status" = missing ] && row install "import $mod" missing 0 "$why"
    done <"$OUTDIR/.imports"
  else
    row install "imports" failed 0 "the import probe failed: $(lastline)"
  fi
  rm -f "$OUTDIR/.imports"
fi

# 4. the driver, under a hard timeout: a hang still leaves the CSV (rewritten after every row)
RC=3
LEFT=$((TOTAL - (SECONDS - T0) - 15))  # 15 s for the summary and the clean-up
if [ $TORCH = 0 ]; then
  row gpu_check driver not_run nan "no torch for $PY"
elif [ $LEFT -lt 60 ]; then
  row gpu_check driver not_run nan "only ${LEFT}s left of --total-s $TOTAL after the installation"
else
  say "driver: up to ${LEFT}s; log $LOG"
  DRIVER=("$PY" benchmarks/gpu_check.py --out "$OUTDIR" --install-rows "$ROWS" --budget-s $((LEFT - 15))
          ${ARGS[@]+"${ARGS[@]}"})
  if [ ${#TIMEOUT[@]} -gt 0 ]; then
    timeout --kill-after=10 "$LEFT" "${DRIVER[@]}" >>"$LOG" 2>&1 </dev/null &
  else
    "${DRIVER[@]}" >>"$LOG" 2>&1 </dev/null &
  fi
  PID=$!
  trap 'kill -TERM -- -$PID $PID 2>/dev/null' INT TERM
  wait $PID
  RC=$?
  trap - INT TERM
  # what it left running (compile workers, the grid planner, executor workers) is in timeout's group
  kill -KILL -- -"$PID" 2>/dev/null
  [ -s "$CSV" ] || cp "$ROWS" "$CSV"
  ROWFILE="$CSV"
  case $RC in
    0) ;;
    124|137) row gpu_check driver timeout nan "stopped at the hard limit (${LEFT}s); the CSV has the rows until then" ;;
    *) row gpu_check driver error nan "exit $RC: $(lastline)" ;;
  esac
fi
[ -s "$CSV" ] || cp "$ROWS" "$CSV"

# 5. the summary, last, whatever happened above
if ! limited 30 "$PY" -S benchmarks/gpu_check.py --summary-only --out "$OUTDIR" 2>>"$LOG" </dev/null; then
  echo "gpu_check: no summary could be made; the CSV's first rows:"
  head -c 5000 "$CSV"
fi
if [ $RC != 0 ]; then
  echo "--- the last lines of $LOG"
  tail -n 12 "$LOG" | cut -c1-160
fi
echo "gpu_check: $((SECONDS - T0))s; files in $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
exit $RC
