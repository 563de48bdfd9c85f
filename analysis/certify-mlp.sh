#!/usr/bin/env bash
# PAC-Bayes certificates (`genbound certify`, docs/theory.md section 5d) on the MLP track of the demo: an MLP
# self-pretrained on Fashion-MNIST (2 epochs), lora and cla (r = 8) fine-tuned on MNIST-5k, each certified with a
# data-dependent prior on half of the 4,000 training examples. CPU, a few minutes. Results: reports/certify-mlp/.
set -euo pipefail
RUNS=${RUNS:-runs/certify-mlp}
OUT=${OUT:-reports/certify-mlp}
G=${GENBOUND:-genbound}
mkdir -p "$OUT"
test -f $RUNS/base/genbound-base.json || $G pretrain --model mlp --data fashion-mnist --hidden 256 256 \
  --epochs 2 --batch-size 128 --lr 2e-3 --quiet --out $RUNS/base
for m in lora cla; do
  test -f $RUNS/$m/genbound.json || $G train --model $RUNS/base --data mnist-5k --method $m --rank 8 --alpha 16 \
    --epochs 5 --batch-size 64 --lr 3e-3 --quiet --out $RUNS/$m
  $G certify --ckpt $RUNS/$m --prior data --prior-epochs 20 --epochs 10 --lr 3e-3 --sigma-prior 0.003 0.01 \
    --samples 300 --quiet --json $OUT/$m.json > $OUT/$m.txt
  $G certify --ckpt $RUNS/$m --prior init --samples 100 --quiet --json $OUT/$m-init.json > $OUT/$m-init.txt
done
