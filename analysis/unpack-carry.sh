#!/usr/bin/env bash
# On the GPU machine: unpack every .carry/NAME.tar.xz (a carried folder packed losslessly to fit the device tool's
# 64 MiB per call, e.g. `tar -C .carry -cf - minilm16 | xz -6 > .carry/minilm16.tar.xz`) into .carry/NAME, unless
# that folder is there already.   bash analysis/unpack-carry.sh
set -euo pipefail
for f in .carry/*.tar.xz; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .tar.xz)
  [ -d ".carry/$name" ] || tar -C .carry -xJf "$f"
done
