#!/usr/bin/env bash
# Certificate settings looked at on MiniLM / WordNet (N = 8,000) before the 36-run study
# (analysis/minilm-wordnet-certified.toml), on the GPU machine: seed-0 runs of METHODS trained as that study trains
# them (r = 16, alpha 32, k = 3 for chain methods, 3 epochs of batch 32, lr 5e-4; full 1e-4, head 5e-3), each
# certified (`genbound certify`, data-dependent prior) with every setting in VARIANTS below, in parallel processes.
# Results: $OUT/<method>-<variant>.json and .txt, and $OUT/tuning.txt (one line per certificate beside the run's
# unconstrained test accuracy). Resumable on a warm machine: a finished step is skipped.
#   METHODS="lora" VARIANTS="half6 half12 p80" OUT=runs/tuning ARCHIVE=$OUT/tuning.tgz bash analysis/certify-minilm-tuning.sh
# Carry .carry/minilm16 (or minilm16.tar.xz) and .carry/wordnet (unpacked here).
set -euo pipefail
RUNS=${RUNS:-runs/certify-minilm}
OUT=${OUT:-reports/certificates/minilm/tuning}
METHODS=${METHODS:-lora}
MODEL=${MODEL:-.carry/minilm16}
EXTRA=${EXTRA:-}  # training options added, e.g. "--n-train 256 --device cpu" for a quick check here
CEXTRA=${CEXTRA:-}  # certify options added, e.g. "--device cpu"
VARIANTS=${VARIANTS:-half6 half12 p80 half6post}
export GENBOUND_WORDNET_DIR=${GENBOUND_WORDNET_DIR:-/tmp/wordnet} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
[ -f "$GENBOUND_WORDNET_DIR/data.noun" ] || bash analysis/unpack-wordnet.sh "$GENBOUND_WORDNET_DIR"
bash analysis/unpack-carry.sh  # .carry/minilm16.tar.xz, when carried packed
mkdir -p "$RUNS" "$OUT"
COMMON="--prior data --batch-size 32 --sigma-prior 0.001 0.003 --samples 50 --draw-batch 64 --eval-batch-size 64"
options() {  # VARIANT -> the certify options that differ between variants
  case $1 in
    half6) echo "--prior-fraction 0.5 --prior-epochs 6 --epochs 0" ;;        # the study file's settings
    half12) echo "--prior-fraction 0.5 --prior-epochs 12 --epochs 0" ;;      # a longer-trained prior mean
    p80) echo "--prior-fraction 0.8 --prior-epochs 6 --epochs 0" ;;          # the prior sees more, the bound less
    half6post) echo "--prior-fraction 0.5 --prior-epochs 6 --epochs 2" ;;    # f-quad posterior training from P
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
for m in $METHODS; do  # train the seed-0 runs, one process each
  k=1; case $m in cola|rac|c3la|rc3la) k=3;; esac
  lr=5e-4; [ $m = full ] && lr=1e-4; [ $m = head ] && lr=5e-3
  [ -f $RUNS/$m/genbound.json ] || python3 -m genbound train --model $MODEL --data wordnet $EXTRA --method $m \
    --rank 16 --alpha 32 --chain $k --epochs 3 --batch-size 32 --lr $lr --seed 0 --quiet --out $RUNS/$m &
done
wait
for m in $METHODS; do  # every certificate at once (the GPU has room; start-up overlaps)
  for v in $VARIANTS; do
    [ -f $OUT/$m-$v.json ] || { t0=$SECONDS; python3 -m genbound certify --ckpt $RUNS/$m $COMMON $(options $v) $CEXTRA --quiet \
      --json $OUT/$m-$v.json > $OUT/$m-$v.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $OUT/$m-$v.txt; } &
  done
done
wait
python3 - "$RUNS" "$OUT" $METHODS -- $VARIANTS <<'PY' | tee "$OUT/tuning.txt"
import json, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
cut = sys.argv.index("--")
methods, variants = sys.argv[3:cut], sys.argv[cut + 1:]
print("run | variant | test acc (unconstrained) | certificate | stochastic test err | mean test err | n | KL")
for m in methods:
    acc = json.loads((runs / m / "genbound.json").read_text())["metrics"].get("test_acc")
    for v in variants:
        f = out / f"{m}-{v}.json"
        if not f.is_file():
            print(f"{m} | {v} | {acc} | (failed: see {m}-{v}.txt)")
            continue
        c = json.loads(f.read_text())
        print(f"{m} | {v} | {acc:.4f} | {c['certificate']:.4f} | {c['stochastic_test_err']:.4f} | "
              f"{c['mean_test_err']:.4f} | {c['n']} | {c['kl']:.3g}")
PY
# The device tool returns few files per call: ARCHIVE=$OUT/certify-tuning.tgz packs the results into one.
[ -z "${ARCHIVE:-}" ] || tar czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")"
