#!/usr/bin/env bash
# Every method, one short run each, MiniLM on WordNet supersenses, on the GPU machine (device tool).
# Carry: .carry/minilm16 (MiniLM re-saved in fp16) and .carry/wordnet/*.gz or *.xz (Debian wordnet-base data files).
# Usage there: bash benchmarks/wordnet_methods.sh; results (manifests, metrics, table) go to $OUT.
set -euo pipefail
MODEL=${MODEL:-.carry/minilm16}
EPOCHS=${EPOCHS:-3}
METHODS=${METHODS:-"full head lora lora_plus asym cola rac cla rcla c3la rc3la paca"}
OUT=${OUT:-runs/wordnet-out}
export GENBOUND_WORDNET_DIR=/tmp/wordnet PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$GENBOUND_WORDNET_DIR" "$OUT"
bash analysis/unpack-wordnet.sh "$GENBOUND_WORDNET_DIR"
for m in $METHODS; do
  k=1; case $m in cola|rac|c3la|rc3la) k=3;; esac
  lr=5e-4; [ "$m" = full ] && lr=1e-4
  test -f "runs/wordnet/$m/genbound.json" || python3 -m genbound train --model "$MODEL" --data wordnet --method "$m" --rank 16 --alpha 32 --chain $k \
    --epochs "$EPOCHS" --batch-size 32 --lr $lr --seed 0 --quiet --out "runs/wordnet/$m" 2>&1 | tee -a "$OUT/log.txt"
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); rows = {}
for man in sorted(pathlib.Path("runs/wordnet").glob("*/genbound.json")):
    rows[man.parent.name] = json.loads(man.read_text())
(out / "manifests.json").write_text(json.dumps(rows, indent=1))
PY
