#!/usr/bin/env bash
# A non-vacuous attempt on MiniLM / WordNet: nearly all synsets (N = 100,000 train, 15,000 test), small
# adapters (r = 4), one epoch, then the compression bound (1-2 bit codes, quantization-aware fine-tune).
# GPU machine (device tool); carry .carry and .whl. Results go to $OUT (commit under reports/bounds-wordnet/).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD GENBOUND_WORDNET_DIR=/tmp/wordnet
mkdir -p $GENBOUND_WORDNET_DIR "$OUT"
bash analysis/unpack-wordnet.sh "$GENBOUND_WORDNET_DIR"
for m in ${METHODS:-cla c3la lora}; do
  k=1; [ "$m" = c3la ] && k=3
  test -f runs/wn-large/$m/genbound.json || python3 -m genbound train --model .carry/minilm16 --data wordnet \
    --n-train 100000 --n-test 15000 --method $m --rank 4 --alpha 8 --chain $k --epochs 1 --batch-size 64 \
    --lr 1e-3 --eval-samples 2000 --quiet --out runs/wn-large/$m | tee -a "$OUT/large-log.txt"
  python3 -m genbound compute --ckpt runs/wn-large/$m --loss 01 --no-base-gap --compress --compress-bits 1 2 \
    --qat-steps 200 --json "$OUT/large-$m.json" | tee -a "$OUT/large-log.txt"
done
