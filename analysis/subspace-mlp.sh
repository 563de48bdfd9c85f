#!/usr/bin/env bash
# Subspace training on the exact-theory MLP track (docs/theory.md section 5e): the base of bounds-mlp.sh (an MLP
# self-pretrained on Fashion-MNIST classes 0-4), lora and cla fine-tuned on classes 5-9 (N = 30,000) with and
# without --subspace D, each with the compression bound (the same grid as bounds-mlp.sh). CPU, ~40 minutes on 2 cores.
# Subspace runs use lr 1e-2, picked from {3e-3, 1e-2} on one pilot run (lora, D = 1000), so their code pays
# log2(2) = 1 bit for that choice (--hyper-settings 2). Results: reports/subspace-mlp/.
set -euo pipefail
RUNS=${RUNS:-runs/subspace-mlp}
OUT=${OUT:-reports/subspace-mlp}
G=${GENBOUND:-genbound}
mkdir -p "$OUT"
test -f $RUNS/base/genbound-base.json || $G pretrain --model mlp --data fashion-mnist@0-4 --hidden 256 256 \
  --epochs 3 --batch-size 128 --lr 2e-3 --quiet --out $RUNS/base
# D = 0: no subspace, at bounds-mlp.sh's lr 3e-3 (one setting) and at the subspace runs' lr 1e-2 (two tried)
for spec in "lora 0 3e-3" "lora 0 1e-2" "lora 250 1e-2" "lora 1000 1e-2" "lora 4000 1e-2" \
            "cla 0 3e-3" "cla 0 1e-2" "cla 250 1e-2" "cla 1000 1e-2" "cla 3000 1e-2"; do
  set -- $spec
  m=$1 d=$2 lr=$3
  hyper=2; [ $lr = 3e-3 ] && hyper=1
  if [ $d = 0 ]; then name=$m-lr$lr; sub=""; else name=$m-d$d; sub="--subspace $d"; fi
  test -f $RUNS/$name/genbound.json || $G train --model $RUNS/base --data fashion-mnist@5-9 --method $m --rank 4 \
    --alpha 8 --epochs 2 --batch-size 128 --lr $lr $sub --quiet --out $RUNS/$name
  test -f $OUT/$name.json || $G compute --ckpt $RUNS/$name --device cpu --loss 01 --compress \
    --compress-bits 1 2 3 4 --qat-steps 300 \
    --hyper-settings $hyper --json $OUT/$name.json > $OUT/$name.txt
  tail -n 2 $OUT/$name.txt
done
