#!/usr/bin/env bash
# The README's user flow, one command at a time as a user types it, and where each command's wall time goes:
# train lora and cla (MiniLM on WordNet, r = 16, 3 epochs), then spectrum, compute, hessian --top-k 5 --trace,
# landscape --grid 21 on lora, and compare of the two. Prints a table: command | wall s | work s | fixed s,
# work from the command's JSON "phases" (train: the training steps; an analysis: its own work, without
# loading; compare writes none: "-"), fixed = wall - work (start-up, imports, data, model). Each command's
# JSON, its stderr (GENBOUND_TIMING=1: the phases) and the table (table.md) go under $OUT.
# Usage (on the GPU): bash benchmarks/user_flow.sh. SMOKE=1: a small CPU run of the same flow (tiny-bert on a
# three-class csv written into $OUT, a few steps). Settings through the environment:
#   MODEL (minilm)  DATA (wordnet; needs GENBOUND_WORDNET_DIR)  N_TRAIN, N_TEST (the task's defaults)
#   TRAIN ("--epochs 3 --rank 16 --alpha 32")  HESSIAN ("--top-k 5 --trace")  LANDSCAPE ("--grid 21")
#   DEVICE (auto)  OUT (runs/user-flow)  PYTHON (python)
set -uo pipefail
MODEL=${MODEL:-minilm}
DATA=${DATA:-wordnet}
TRAIN=${TRAIN:---epochs 3 --rank 16 --alpha 32}
HESSIAN=${HESSIAN:---top-k 5 --trace}
LANDSCAPE=${LANDSCAPE:---grid 21}
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=${SMOKE_MODEL:-tiny-bert}; DATA=${SMOKE_DATA:-}; DEVICE=${DEVICE:-cpu}
  N_TRAIN=${N_TRAIN:-96}; N_TEST=${N_TEST:-32}; TRAIN="--steps 4 --rank 4 --alpha 8"
  HESSIAN="--top-k 2 --trace --samples 16 --batch 16 --probes 3"; LANDSCAPE="--grid 3 --samples 16"
fi
DEVICE=${DEVICE:-auto}
OUT=${OUT:-runs/user-flow}
PYTHON=${PYTHON:-python}
SIZES="${N_TRAIN:+--n-train $N_TRAIN} ${N_TEST:+--n-test $N_TEST}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} GENBOUND_TIMING=1
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "user_flow.sh: $OUT is not empty; choose another OUT" >&2; exit 2
fi
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ] && [ -z "$DATA" ]; then
  DATA=$OUT/smoke.csv
  { echo "text,label"; for i in $(seq 60); do for w in aa bb cc; do echo "$w $w x$i,$w"; done; done; } >"$DATA"
fi
: >"$OUT/times.txt"
fail=0

# run NAME ARGS...: one genbound command, timed from outside (the whole process), its JSON in $OUT/NAME.json
run() {
  local name=$1; shift
  local start
  start=$(date +%s.%N)
  if $PYTHON -m genbound "$@" --quiet --json "$OUT/$name.json" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    echo "$name $start $(date +%s.%N)" >>"$OUT/times.txt"
  else
    echo "user_flow.sh: genbound $* failed:" >&2; tail -3 "$OUT/$name.err" >&2; fail=1
    echo "$name failed" >>"$OUT/times.txt"
  fi
}

for m in lora cla; do
  run "train-$m" train --model "$MODEL" --data "$DATA" --method "$m" $TRAIN $SIZES --device "$DEVICE" --out "$OUT/$m"
done
if [ $fail = 0 ]; then
run spectrum spectrum --ckpt "$OUT/lora" --device "$DEVICE"
run compute compute --ckpt "$OUT/lora" --device "$DEVICE"
run hessian hessian --ckpt "$OUT/lora" $HESSIAN --device "$DEVICE"
run landscape landscape --ckpt "$OUT/lora" $LANDSCAPE --device "$DEVICE" --out "$OUT/landscape"
run compare compare "$OUT/lora" "$OUT/cla" --device "$DEVICE" --out "$OUT/report"
fi

$PYTHON - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| command | wall s | work s | fixed s |")
print("|---|---:|---:|---:|")
for line in (out / "times.txt").read_text().splitlines():
    name, *times = line.split()
    if times == ["failed"]:
        print(f"| {name} | failed | | |")
        continue
    wall = float(times[1]) - float(times[0])
    data = json.loads((out / f"{name}.json").read_text())
    phases = data.get("phases") or (data.get("results") or [{}])[0].get("phases")
    work = "-" if not phases else f"{phases['work']:.1f}"
    fixed = "-" if not phases else f"{wall - phases['work']:.1f}"
    print(f"| {name} | {wall:.1f} | {work} | {fixed} |")
PY
exit $fail
