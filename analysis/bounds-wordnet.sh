#!/usr/bin/env bash
# `genbound compute` on MiniLM / WordNet for lora, cla and c3la, on the GPU machine (device tool).
# Carry .carry (MiniLM fp16, WordNet data) and .whl (constriction for the GPU machine's Python).
# Results (6 JSON files, manifests.json, log.txt with the tables) go to $OUT; commit them under reports/bounds-wordnet/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export GENBOUND_WORDNET_DIR=/tmp/wordnet
export METHODS=${METHODS:-"lora cla c3la"}
bash benchmarks/wordnet_methods.sh
for m in $METHODS; do
  python3 -m genbound compute --ckpt runs/wordnet/$m --loss 01 --compress --compress-bits 2 3 --qat-steps 100 \
    --json "$OUT/$m-01.json" | tee -a "$OUT/log.txt"
  python3 -m genbound compute --ckpt runs/wordnet/$m --loss ce --smoothing 0.1 --no-base-gap \
    --json "$OUT/$m-ce.json" | tee -a "$OUT/log.txt"
done
