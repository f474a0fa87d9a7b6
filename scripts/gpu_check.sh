#!/usr/bin/env bash
# The CUDA path, measured: run this whenever a CUDA GPU is at hand, and put what it prints
# (with the date and the GPU's name, both in its first lines) into the README's Performance
# section. Steps:
#   1. the GPU, torch's CUDA build, bf16 support, and what `precision: auto` resolves to
#      for the encoder stages and for CTR/embed;
#   2. a tiny `visctr run` on the GPU under `precision: auto` (bf16-mixed encoders on a
#      bf16 GPU), then the same under `--precision 32`: wall time and the HR@10 / A/B CTR
#      of each (bf16 vs fp32, end to end);
#   3. benchmarks/s1_throughput.py --device cuda (its `visctr bf16 / fp32` line is the
#      encoder step's bf16 vs fp32) and benchmarks/ctr_throughput.py --device cuda;
#   4. with 2 or more GPUs: the tiny run's stages under 2-process DDP.
# A step that fails prints "FAILED (exit N)" and the script goes on; it exits with the number
# of failed steps. Everything is also written to $OUT_DIR/gpu_check.log.
#
#   scripts/gpu_check.sh [--quick]      # --quick: fewer benchmark rounds and steps
#
# Environment: PYTHON (default .venv/bin/python, else python3 with PYTHONPATH=src: the
# package need not be installed), VISCTR_DATA (the Fashion-MNIST idx files; default
# /usr/share/datasets/fashion-mnist), OUT_DIR (default runs/gpu-check).
# On a machine with nothing but torch, Lightning and the image's usual packages, FAISS
# (faiss-cpu) is the one visctr dependency to bring along, e.g. as a wheel.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:-runs/gpu-check}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
: >"$LOG"
DATA_ARGS=()
[[ -n "${VISCTR_DATA:-}" ]] && DATA_ARGS=(--data-dir "$VISCTR_DATA")
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

step() {  # step NAME CMD...: run, time, log; a failure is counted, not fatal
  local name=$1
  shift
  say ""
  say "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    say "== $name: FAILED (exit $rc) after $((SECONDS - t0)) s"
    FAILED=$((FAILED + 1))
  else
    say "== $name: ok, $((SECONDS - t0)) s"
  fi
}

say "visctr GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), python: $PY"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no CUDA GPU visible to torch here: nothing to check (the CPU path is what 'make test' covers)"
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"

step facts "$PY" - <<'EOF'
import torch
from visctr.precision import resolve_precision
n = torch.cuda.device_count()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {n} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(n)))
print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
print(f"precision auto -> encoder stages: {resolve_precision('auto', 'gpu', bf16_ok=True)}, "
      f"CTR and embed: {resolve_precision('auto', 'gpu', bf16_ok=False)}")
EOF

summary() {  # the headline figures of a run directory
  "$PY" - "$1" <<'EOF'
import json, sys
r = json.load(open(f"{sys.argv[1]}/results.json"))
t = r.get("timings_s", {})
print(f"{sys.argv[1]}: total {t.get('total', float('nan')):.0f} s; " + ", ".join(
    f"{k} {v:.0f}s" for k, v in t.items() if k != "total" and isinstance(v, int | float)))
for m, res in r.get("methods", {}).items():
    hr = res.get("hr@10", {}).get("mean")
    print(f"  {m:10s} hr@10 {hr if hr is None else round(hr, 3)}")
for m, res in r.get("ab_test", {}).get("methods", {}).items():
    print(f"  A/B {m:10s} ctr {res['ctr']['mean']:.4f}")
EOF
}

RUN=(-m visctr run --preset tiny --seeds 1 --accelerator gpu --devices 1 "${DATA_ARGS[@]}")
step "tiny run, precision auto" "$PY" "${RUN[@]}" --out "$OUT_DIR/tiny-auto" --restart
[[ -f "$OUT_DIR/tiny-auto/results.json" ]] && summary "$OUT_DIR/tiny-auto" | tee -a "$LOG"
step "tiny run, precision 32" "$PY" "${RUN[@]}" --precision 32 --out "$OUT_DIR/tiny-fp32" --restart
[[ -f "$OUT_DIR/tiny-fp32/results.json" ]] && summary "$OUT_DIR/tiny-fp32" | tee -a "$LOG"

if ((QUICK)); then
  S1_ARGS=(--rounds 1 --steps 5 --items 2000)
  CTR_ARGS=(--rounds 2 --steps 20 --no-lightning)
else
  S1_ARGS=(--rounds 3)
  CTR_ARGS=(--rounds 3)
fi
step "S1 throughput" "$PY" benchmarks/s1_throughput.py --device cuda --threads 8 "${S1_ARGS[@]}"
step "CTR throughput" "$PY" benchmarks/ctr_throughput.py --device cuda --threads 8 "${CTR_ARGS[@]}"

N_GPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if ((N_GPU >= 2)); then
  step "tiny run, 2-process DDP" "$PY" -m visctr run --preset tiny --seeds 1 --accelerator gpu \
    --devices 2 --strategy ddp "${DATA_ARGS[@]}" --out "$OUT_DIR/tiny-ddp" --restart
  [[ -f "$OUT_DIR/tiny-ddp/results.json" ]] && summary "$OUT_DIR/tiny-ddp" | tee -a "$LOG"
else
  say ""
  say "== DDP: skipped ($N_GPU GPU here; it needs 2)"
fi

say ""
say "GPU check done: $FAILED failed step(s); log in $LOG"
exit "$FAILED"
