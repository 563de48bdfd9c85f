#!/usr/bin/env bash
# analysis/minilm-wordnet.toml on the GPU machine: see analysis/gpu-study.sh.
exec bash "$(dirname "$0")/gpu-study.sh" minilm-wordnet "$@"
