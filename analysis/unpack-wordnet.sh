#!/usr/bin/env bash
# Unpack the carried WordNet data files (.carry/wordnet/data.*.gz or .xz, Debian wordnet-base) into DIR, for the
# GPU machine's scripts: bash analysis/unpack-wordnet.sh /tmp/wordnet
set -euo pipefail
DIR=${1:?usage: bash analysis/unpack-wordnet.sh DIR}
mkdir -p "$DIR"
for f in .carry/wordnet/data.*; do
  case $f in
    *.gz) gunzip -c "$f" > "$DIR/$(basename "$f" .gz)" ;;
    *.xz) xz -dc "$f" > "$DIR/$(basename "$f" .xz)" ;;
  esac
done
