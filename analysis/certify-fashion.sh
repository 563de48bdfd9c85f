#!/usr/bin/env bash
# PAC-Bayes certificates (`genbound certify`, docs/theory.md section 5d) on the exact-theory MLP track, every method:
# an MLP 784-256-256 self-pretrained on Fashion-MNIST classes 0-4, fine-tuned on classes 5-9 (N = 30,000) with
# the options of analysis/mlp-fashion.toml (r = 16, alpha 32, k = 3 for chain methods, 2 epochs, batch 128, lr 3e-3,
# full 5e-4). Per checkpoint: compute with the 0-1 loss and the compression bound (the paper's bound, the Occam
# bound), compute with the smoothed CE (Theorem 1's total), and certify with a data-dependent prior, with the
# options below, chosen once on lora by its certificate (reports/certificates/mlp/tuning-lora.txt) and used for
# every method. Resumable: a finished step is skipped. CPU. Results: reports/certificates/.
#   SEEDS="0 1 2" bash analysis/certify-fashion.sh     (default SEEDS=0; seed s > 0 runs in RUNS/<method>-s<s>)
# METHODS="lora cla" runs only those (e.g. two shells on two cores; a last run with all of them writes the report).
# One thread a process by default: the draws are many small forward passes, better spread over cores as processes
# (METHODS) than as threads.
set -euo pipefail
RUNS=${RUNS:-runs/certify-fashion}
OUT=${OUT:-reports/certificates/mlp}
G=${GENBOUND:-genbound}
PY=${PYTHON:-python}
SEEDS=${SEEDS:-0}
METHODS=${METHODS:-full head lora lora_plus asym cola rac cla rcla c3la rc3la paca}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CERTIFY="--prior data --prior-fraction 0.5 --prior-epochs 20 --epochs 0 --sigma-prior 0.001 0.003 --samples 100
  --draw-batch 32"
mkdir -p "$OUT"

timed() {  # NAME COMMAND...: run it and append its wall time to $OUT/wall-times.txt
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "$name $((SECONDS - t0)) s" >> "$OUT/wall-times.txt"
}
train() { $G train --model $RUNS/base --data fashion-mnist@5-9 --method $1 --rank 16 --alpha 32 --chain $2 --epochs 2 \
  --batch-size 128 --lr $3 --seed $4 --quiet --out $5; }
compute01() { $G compute --ckpt $1 --device cpu --loss 01 --compress --compress-bits 2 3 --schemes uniform \
  --qat-steps 300 --quiet --json $1/analysis/compute.json > $1/analysis/compute.txt; }
computece() { $G compute --ckpt $1 --device cpu --loss ce --smoothing 0.1 --no-base-gap --quiet \
  --json $1/analysis/compute-ce.json > $1/analysis/compute-ce.txt; }
certify() { $G certify --ckpt $1 --device cpu $CERTIFY --quiet --json $1/analysis/certify.json > $1/analysis/certify.txt; }

test -f $RUNS/base/genbound-base.json || timed pretrain $G pretrain --model mlp --data fashion-mnist@0-4 \
  --hidden 256 256 --epochs 3 --batch-size 128 --lr 2e-3 --quiet --out $RUNS/base
done_runs=()
for seed in $SEEDS; do
  for m in $METHODS; do
    k=1; case $m in cola|rac|c3la|rc3la) k=3;; esac
    lr=3e-3; [ $m = full ] && lr=5e-4
    name=$m; [ $seed = 0 ] || name=$m-s$seed
    run=$RUNS/$name
    test -f $run/genbound.json || timed "train $name" train $m $k $lr $seed $run
    mkdir -p $run/analysis
    test -f $run/analysis/compute.json || timed "compute $name" compute01 $run
    test -f $run/analysis/compute-ce.json || timed "compute-ce $name" computece $run
    test -f $run/analysis/certify.json || timed "certify $name" certify $run
    for a in compute compute-ce certify; do
      cp $run/analysis/$a.json $OUT/$name-$a.json
      cp $run/analysis/$a.txt $OUT/$name-$a.txt
    done
    done_runs+=($run)
  done
done
# Kendall tau of the certificate (and the other measures) against the measured gaps, over the certified runs
$G compare "${done_runs[@]}" --out $OUT --analyses none --title "PAC-Bayes certificates, MLP Fashion-MNIST 0-4 -> 5-9" \
  --quiet
$PY analysis/certificates_table.py $OUT reports/certificates/README.md
