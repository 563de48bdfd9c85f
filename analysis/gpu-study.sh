#!/usr/bin/env bash
# A study file analysis/NAME.toml on the GPU machine (device tool), as SHARDS parallel processes spread over the
# GPUs there; the runs not yet finished are dealt over the shards, seed 0 of every method first, so a call cut
# short by LIMIT still leaves whole seeds. Then the report over every run whose analyses all finished, and one
# archive under $OUT. SHARDS = the number of runs left gives each its own process.
# Carry: .carry (minilm16, or minilm16.tar.xz when a call is short of room, + wordnet/*.gz or *.xz) and .whl (constriction and gguf wheels for Python 3.12); for
# vit-fashion .carry/fashion-mnist (the four idx .gz files); for smollm2-wordnet SmolLM2's GGUF as
# .carry/smollm2/gguf.part0, part1 (split -b 49M; one part per warm call, the run in the last) and
# .carry/smollm2-sha256 (sha256sum of the whole file), joined and checked here.
# Usage there: SHARDS=12 LIMIT=470 bash analysis/gpu-study.sh NAME   (NAME: minilm-wordnet, minilm-wordnet-pairs)
# The kept results of earlier calls (reports/NAME/runs: manifests, metrics, analysis JSONs) count as finished; the
# trained runs whose analyses did not all finish come back whole (weights included, when under 10 MiB) in
# partial/NAME/ of the archive: put them under .carry/partial/NAME/ (ignored) and the next call finishes them.
set -uo pipefail
NAME=${1:?usage: bash analysis/gpu-study.sh NAME}
SHARDS=${SHARDS:-12}
LIMIT=${LIMIT:-470}
OUT=${OUT:-runs/out}
export GENBOUND_WORDNET_DIR=/tmp/wordnet PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$GENBOUND_WORDNET_DIR" "$OUT" runs/logs
rm -f runs/logs/shard-*.log  # logs of an earlier call on a warm machine would read as this one's
bash analysis/unpack-wordnet.sh "$GENBOUND_WORDNET_DIR"
bash analysis/unpack-carry.sh  # e.g. .carry/minilm16.tar.xz
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .carry/smollm2/gguf.part* >/dev/null 2>&1; then  # SmolLM2's GGUF, carried in parts over warm calls
  mkdir -p /tmp/smollm2 && cat .carry/smollm2/gguf.part* > /tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  (cd /tmp/smollm2 && sha256sum -c --quiet "$OLDPWD/.carry/smollm2-sha256") || {
    echo "the carried SmolLM2 parts do not join to the recorded sha256"; exit 1; }
  export GENBOUND_SMOLLM2_DIR=/tmp/smollm2
fi
[ -d .carry/fashion-mnist ] && export GENBOUND_FASHION_MNIST_DIR=$PWD/.carry/fashion-mnist
mkdir -p "runs/$NAME"  # finished runs (results, no weights) are skipped by the study
for d in reports/"$NAME"/runs/*/ .carry/partial/"$NAME"/*/; do [ -d "$d" ] && { [ -d "runs/$NAME/$(basename "$d")" ] || cp -r "$d" "runs/$NAME/"; }; done
GPUS=$(nvidia-smi -L | wc -l)
for i in $(seq 0 $((SHARDS - 1))); do
  CUDA_VISIBLE_DEVICES=$((i % GPUS)) timeout "$LIMIT" python3 -m genbound study "analysis/$NAME.toml" \
    --shard "$i/$SHARDS" --quiet > "runs/logs/shard-$i.log" 2>&1 &
done
wait
mapfile -t done_runs < <(python3 - "analysis/$NAME.toml" <<'PY'  # the runs the study counts as finished
import sys

from genbound.study import finished, grid, load_study

study = load_study(sys.argv[1])
print("\n".join(f"{study.runs}/{r['name']}" for r in grid(study) if finished(study, r)))
PY
)
echo "${#done_runs[@]} runs with every analysis"
timeout 90 python3 -m genbound compare "${done_runs[@]}" --out "reports/$NAME" --title "$NAME" \
  > runs/logs/compare.log 2>&1 || echo "compare failed: see runs/logs/compare.log"
tar czf "$OUT/$NAME.tgz" --exclude='*.safetensors' --exclude='*.pt' "reports/$NAME" runs/logs \
  $(for d in "runs/$NAME"/*/; do ls "$d"genbound.json "$d"metrics.jsonl "$d"analysis/*.json 2>/dev/null; done)
mkdir -p "partial/$NAME"  # trained but unfinished runs, whole, for the next call
for d in "runs/$NAME"/*/; do
  n=$(basename "$d"); printf '%s\n' "${done_runs[@]}" | grep -qx "runs/$NAME/$n" && continue
  [ -f "$d/adapter.safetensors" ] && [ "$(du -sm --exclude=resume "$d" | cut -f1)" -lt 10 ] && \
    [ "$(du -sm partial | cut -f1)" -lt 30 ] && \
    { cp -r "$d" "partial/$NAME/" && rm -rf "partial/$NAME/$n/resume"; }  # 30 MiB in all: what comes back
done
if [ -f "runs/$NAME/base/genbound-base.json" ]; then  # a self-pretrained base: its weights and records only
  mkdir -p "partial/$NAME/base" && cp runs/"$NAME"/base/*.json runs/"$NAME"/base/model.safetensors "partial/$NAME/base/"
fi
tar czf "$OUT/$NAME-partial.tgz" partial
ls -la "$OUT"
