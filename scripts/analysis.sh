#!/usr/bin/env bash
# `make analysis`: builds what the experiments need, runs them against a real
# deployment (Docker by default, RUNTIME=process for child processes), and writes
# analysis/results.json, analysis/charts/*.png and analysis/report.md. Arguments go
# to `analysis`: `bash scripts/analysis.sh --only a5` (or `--only a6`) reruns that
# experiment alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-docker}
CARGO=${CARGO:-cargo}
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

# The charts' text needs a TrueType font; Debian ships DejaVu in fonts-dejavu-core.
if [[ ! -f $FONT ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
  else
    echo "error: $FONT is missing: install fonts-dejavu-core" >&2
    exit 1
  fi
fi

"$CARGO" build --release -p load_balancer -p server -p analysis
if [[ $RUNTIME == docker ]]; then
  bash scripts/images.sh
fi
start=$SECONDS
./target/release/analysis --runtime "$RUNTIME" --out analysis "$@"
echo "analysis: $((SECONDS - start)) s of experiments; see analysis/report.md"
