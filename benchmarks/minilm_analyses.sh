#!/usr/bin/env bash
# MiniLM on WordNet supersenses, on the GPU machine (device tool): train lora, cola, cla, c3la (1 epoch each),
# time the two analysis benchmarks on lora (benchmarks/landscape_speed.py, benchmarks/hessian_speed.py), then
# Hessian spectra (lora, cla, c3la) and loss landscapes (lora, cola, cla, c3la side by side, random directions;
# DIRS="random pca" adds trajectory-PCA ones).
# Carry: .carry/minilm16 (MiniLM re-saved in fp16), .carry/wordnet/*.gz or *.xz (Debian wordnet-base data files) and
# .whl (PyHessian's wheel, installed by the caller on PYTHONPATH).
# Usage there: bash benchmarks/minilm_analyses.sh. Everything goes to $OUT: log.txt, the two benchmarks'
# .json/.md, and analyses.tgz (checkpoint manifests and metrics, hessian-*.json/txt/png, landscape files).
# Every step runs under `timeout`, cut to a deadline BUDGET seconds after the start, so the script always
# ends in time and returns what it has. SMOKE=1: a tiny CPU run of the same steps (tiny-bert, few steps).
# Seen on one H200 (2026-11-28; the landscape benchmark then ran with --attention auto, which then fell back to a
# loop on CUDA and was cut at 99 s): training 45 s (4 in parallel), hessian benchmark 36 s, analyses 182 s;
# the landscape benchmark with --attention eager (now what auto does) and two chunks took about 115 s in a
# separate call.
set -uo pipefail
MODEL=${MODEL:-.carry/minilm16}
OUT=${OUT:-runs/minilm-out}
RUNS=${RUNS:-runs/minilm}
BUDGET=${BUDGET:-450}
METHODS="lora cola cla c3la"
TRAIN="--epochs 1 --rank 16 --alpha 32"
LS="--grid 41 --samples 16 64 256 --chunk 32"
HS="--samples 512 --batch 512 --probe-batch 4 --seeds 2 --repeats 3 --name hessian_speed_residual"
HESS="--top-k 3 --trace --density --samples 512 --batch 128 --tol 1e-4 --density-probes 3 --lanczos-steps 80"
LAND="--grid 21 --samples 512"
DIRS=${DIRS:-random}
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=tiny-bert; TRAIN="--steps 12 --n-train 256 --n-test 128 --rank 4 --alpha 8 --device cpu"
  LS="--grid 5 --samples 16 32 --chunk 4 --device cpu"; HS="--samples 32 --batch 32 --seeds 1 --repeats 1 --device cpu"
  HESS="--top-k 2 --trace --density --samples 32 --batch 16 --probes 3 --density-probes 2 --lanczos-steps 10 --device cpu"
  LAND="--grid 5 --samples 32 --device cpu"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export GENBOUND_WORDNET_DIR=${GENBOUND_WORDNET_DIR:-/tmp/wordnet}
W=$OUT/work
mkdir -p "$OUT" "$W" "$RUNS" "$GENBOUND_WORDNET_DIR"
START=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }
# cap MAX RESERVE: a timeout of at most MAX seconds that leaves RESERVE seconds before the deadline (>= 5)
cap() { local t=$(( BUDGET - ($(date +%s) - START) - $2 )); [ "$t" -gt "$1" ] && t=$1; [ "$t" -lt 5 ] && t=5; echo "$t"; }
step() { local rc; "$@" >>"$OUT/log.txt" 2>&1; rc=$?; log "  exit $rc: ${*:1:6} ..."; return 0; }

[ -f "$GENBOUND_WORDNET_DIR/data.noun" ] || bash analysis/unpack-wordnet.sh "$GENBOUND_WORDNET_DIR"
log "start: $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>&1)"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader >>"$OUT/log.txt" 2>&1

NG=${NG:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}; [ "$NG" -ge 1 ] || NG=1
gpu() { [ "$NG" -ge 2 ] && echo "$1" || echo 0; }  # with 2 GPUs, the analyses run on the second one

log "train $METHODS ($MODEL, $TRAIN), in parallel on $NG GPU(s)"
T=$(cap 150 300); i=0
for m in $METHODS; do
  k=1; case $m in cola|c3la) k=3;; esac
  CUDA_VISIBLE_DEVICES=$(gpu $((i % 2))) timeout "$T" python3 -m genbound train --model "$MODEL" --data wordnet \
    --method "$m" --chain $k $TRAIN --batch-size 32 --lr 5e-4 --seed 0 --quiet --out "$RUNS/$m" >"$W/train-$m.txt" 2>&1 &
  i=$((i + 1))
done
wait
for m in $METHODS; do log "  $(tail -n 1 "$W/train-$m.txt")"; cp "$RUNS/$m/genbound.json" "$W/manifest-$m.json" 2>/dev/null
  cp "$RUNS/$m/metrics.jsonl" "$W/metrics-$m.jsonl" 2>/dev/null; done
have() { for m in "$@"; do [ -f "$RUNS/$m/genbound.json" ] && echo "$m"; done; }

benchmarks() {  # alone on GPU 0: their timings are the measurements
  export CUDA_VISIBLE_DEVICES=0
  log "benchmark: landscape grid, batched vs loop (lora)"
  step timeout "$(cap 120 "$1")" python3 benchmarks/landscape_speed.py --ckpt "$RUNS/lora" $LS --out "$OUT"
  log "benchmark: top Hessian eigenvalue, genbound vs PyHessian (lora)"
  step timeout "$(cap 300 "$2")" python3 benchmarks/hessian_speed.py --ckpt "$RUNS/lora" $HS --out "$OUT"
}

analyses() {  # several processes at once (their own timings are not clean)
  export CUDA_VISIBLE_DEVICES=$(gpu 1)
  log "analyses in parallel on GPU $CUDA_VISIBLE_DEVICES: hessian (lora cla c3la), landscape $DIRS (lora cola cla c3la)"
  local T; T=$(cap 600 20)
  for m in $(have lora cla c3la); do
    timeout "$T" python3 -m genbound hessian --ckpt "$RUNS/$m" $HESS --quiet --json "$W/hessian-$m.json" \
      --plot "$W/density-$m.png" >"$W/hessian-$m.txt" 2>&1 &
  done
  for d in $DIRS; do
    timeout "$T" python3 -m genbound landscape $(for m in $(have $METHODS); do echo --ckpt "$RUNS/$m"; done) \
      --dirs $d $LAND --quiet --out "$W/$d" --json "$W/$d.json" >"$W/$d.txt" 2>&1 &
  done
  wait
  log "analyses done"
}

if [ "$NG" -ge 2 ]; then
  analyses & benchmarks 170 25; wait
else
  benchmarks 260 150; analyses
fi
for f in "$W"/hessian-*.txt $(for d in $DIRS; do echo "$W/$d.txt"; done); do log "== $f"; cat "$f" >>"$OUT/log.txt"; done
tar -czf "$OUT/analyses.tgz" -C "$W" . && rm -rf "$W"
log "done: $(ls "$OUT" | tr '\n' ' ')"
