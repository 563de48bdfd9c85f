#!/usr/bin/env bash
# analysis/minilm-wordnet.toml on the GPU machine (device tool), as SHARDS parallel processes spread over the
# GPUs there; the runs not yet finished are dealt over the shards, seed 0 of every method first, so a call cut
# short by LIMIT still leaves whole seeds. Then the report over every run whose analyses all finished, and one
# archive under $OUT. SHARDS = the number of runs left gives each its own process.
# Carry: .carry (minilm16 + wordnet/*.gz) and .whl (the constriction wheel for Python 3.12).
# Usage there: SHARDS=12 LIMIT=470 bash analysis/minilm-wordnet.sh
set -uo pipefail
SHARDS=${SHARDS:-12}
LIMIT=${LIMIT:-470}
OUT=${OUT:-runs/out}
export GENBOUND_WORDNET_DIR=/tmp/wordnet PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$GENBOUND_WORDNET_DIR" "$OUT" runs/logs
for f in .carry/wordnet/*.gz; do gunzip -c "$f" > "$GENBOUND_WORDNET_DIR/$(basename "$f" .gz)"; done
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p runs/minilm-wordnet  # finished runs (results, no weights) are skipped by the study
for d in reports/minilm-wordnet/runs/*/; do [ -d "runs/minilm-wordnet/$(basename "$d")" ] || cp -r "$d" runs/minilm-wordnet/; done
GPUS=$(nvidia-smi -L | wc -l)
for i in $(seq 0 $((SHARDS - 1))); do
  CUDA_VISIBLE_DEVICES=$((i % GPUS)) timeout "$LIMIT" python3 -m genbound study analysis/minilm-wordnet.toml \
    --shard "$i/$SHARDS" --quiet > "runs/logs/shard-$i.log" 2>&1 &
done
wait
mapfile -t done_runs < <(python3 - <<'PY'  # the runs the study counts as finished (trained, every analysis)
from genbound.study import finished, grid, load_study
study = load_study("analysis/minilm-wordnet.toml")
print("\n".join(f"{study.runs}/{r['name']}" for r in grid(study) if finished(study, r)))
PY
)
echo "${#done_runs[@]} runs with every analysis"
timeout 90 python3 -m genbound compare "${done_runs[@]}" --out reports/minilm-wordnet --title minilm-wordnet \
  > runs/logs/compare.log 2>&1 || echo "compare failed: see runs/logs/compare.log"
tar czf "$OUT/minilm-wordnet.tgz" --exclude='*.safetensors' --exclude='*.pt' reports/minilm-wordnet runs/logs \
  $(for d in runs/minilm-wordnet/*/; do ls "$d"genbound.json "$d"metrics.jsonl "$d"analysis/*.json 2>/dev/null; done)
ls -la "$OUT"
