#!/usr/bin/env bash
# The main job on a generated cohort: synth -> tile -> train (IPS) -> heatmap.
# Usage: bash scripts/quickstart.sh [OUT_DIR]   (default: quickstart-out)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
OUT="${1:-$ROOT/quickstart-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
start=$SECONDS

echo "== 1/4 synthetic cohort -> $OUT/cohort"
if [ ! -f "$OUT/cohort/labels.csv" ]; then
  wsipipe synth --out "$OUT/cohort" --n-slides 32 --width 4096 --height 3072 --seed 0 \
    --tumour-fraction 0.15,0.35
fi

echo "== 2/4 tile -> $OUT/tiles"
wsipipe tile "$OUT/cohort/slides" --out "$OUT/tiles" --workers 2

echo "== 3/4 train end to end (IPS, ResNet-18 from scratch, quickstart preset) -> $OUT/run"
if [ ! -f "$OUT/run/checkpoints/best.pt" ]; then
  rm -rf "$OUT/run"
  wsipipe train --labels "$OUT/cohort/labels.csv" --stores "$OUT/tiles" --out "$OUT/run" \
    --config quickstart
fi

echo "== 4/4 heatmaps of the test slides -> $OUT/heatmaps"
TEST_SLIDES=$(awk -F, 'NR > 1 && $3 == "test" {print $1}' "$OUT/cohort/labels.csv" | paste -sd, -)
wsipipe heatmap --checkpoint "$OUT/run/checkpoints/best.pt" --stores "$OUT/tiles" \
  --out "$OUT/heatmaps" --slides "$TEST_SLIDES" --annotations "$OUT/cohort/annotations"

echo
echo "Done in $((SECONDS - start)) s. Outputs:"
echo "  slides + labels:   $OUT/cohort/slides, $OUT/cohort/labels.csv"
echo "  patch stores:      $OUT/tiles/stores/   (QC images: $OUT/tiles/qc/)"
echo "  training run:      $OUT/run/  (checkpoints/, metrics, predictions)"
echo "  heatmaps:          $OUT/heatmaps/"
find "$OUT/heatmaps" -name '*.png' | sort | sed 's/^/    /'
