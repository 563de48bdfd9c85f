#!/usr/bin/env bash
# The exact-theory track of `genbound compute`: an MLP self-pretrained on Fashion-MNIST classes 0-4,
# fine-tuned on classes 5-9 (a different task on the same kind of inputs, N = 30,000), every number of
# compute for several methods, with the compression bound, then their spectra and intruder dimensions.
# CPU, ~5 minutes. Results: reports/bounds-mlp/ and reports/spectra-mlp/.
set -euo pipefail
RUNS=${RUNS:-runs/bounds-mlp}
OUT=${OUT:-reports/bounds-mlp}
G=${GENBOUND:-genbound}
mkdir -p "$OUT"
test -f $RUNS/base/genbound-base.json || $G pretrain --model mlp --data fashion-mnist@0-4 --hidden 256 256 \
  --epochs 3 --batch-size 128 --lr 2e-3 --quiet --out $RUNS/base
for spec in "lora 4 1" "cola 4 3" "cla 4 1" "rcla 4 1" "c3la 4 3" "paca 4 1" "head 4 1" "full 4 1"; do
  set -- $spec
  m=$1 r=$2 k=$3
  lr=3e-3; [ $m = full ] && lr=5e-4
  test -f $RUNS/$m/genbound.json || $G train --model $RUNS/base --data fashion-mnist@5-9 --method $m --rank $r \
    --alpha $((2 * r)) --chain $k --epochs 2 --batch-size 128 --lr $lr --quiet --out $RUNS/$m
  $G compute --ckpt $RUNS/$m --device cpu --loss 01 --compress --compress-bits 1 2 3 4 --qat-steps 300 \
    --json $OUT/$m-01.json > $OUT/$m-01.txt
  $G compute --ckpt $RUNS/$m --device cpu --loss ce --smoothing 0.1 --no-base-gap --json $OUT/$m-ce.json > $OUT/$m-ce.txt
  tail -n 2 $OUT/$m-01.txt
done
# spectra and intruder dimensions of the same checkpoints (reports/spectra-mlp/)
mkdir -p reports/spectra-mlp
$G spectrum --ckpt $RUNS/lora --ckpt $RUNS/cola --ckpt $RUNS/cla --ckpt $RUNS/c3la --ckpt $RUNS/full --intruders \
  --device cpu --plot reports/spectra-mlp/spectra-lora.png --json reports/spectra-mlp/spectrum.json \
  > reports/spectra-mlp/spectrum.txt
for m in cola cla c3la full; do
  $G spectrum --ckpt $RUNS/$m --device cpu --plot reports/spectra-mlp/spectra-$m.png --quiet > /dev/null
done
