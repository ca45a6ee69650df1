#!/usr/bin/env bash
# The main job on a generated cohort: synth -> tile -> train (IPS on frozen pretrained
# features, preset features-offline) -> heatmap.
# Usage: bash scripts/quickstart.sh [OUT_DIR]   (default: quickstart-out)
# The cohort is cut from REAL H&E slides (../shared/data/real) when they are there, else
# procedurally generated (a fresh clone without the shared data).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
OUT="${1:-$ROOT/quickstart-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
start=$SECONDS

REAL="$ROOT/../shared/data/real"
if [ -d "$REAL/slides" ]; then
  echo "== 1/4 cohort of real H&E texture (from $REAL) -> $OUT/cohort"
  SYNTH=(--texture real --real-dir "$REAL" --n-slides 40 --seed 0)
else
  echo "== 1/4 procedural cohort (no $REAL here) -> $OUT/cohort"
  SYNTH=(--n-slides 32 --width 4096 --height 3072 --seed 0 --tumour-fraction 0.15,0.35)
fi
if [ ! -f "$OUT/cohort/labels.csv" ]; then
  wsipipe synth --out "$OUT/cohort" "${SYNTH[@]}"
fi

echo "== 2/4 tile -> $OUT/tiles"
wsipipe tile "$OUT/cohort/slides" --out "$OUT/tiles" --workers 2

echo "== 3/4 train (IPS on frozen EfficientNet-Lite0 ImageNet features, preset features-offline) -> $OUT/run"
if [ ! -f "$OUT/run/checkpoints/best.pt" ]; then
  rm -rf "$OUT/run"
  wsipipe train --labels "$OUT/cohort/labels.csv" --stores "$OUT/tiles" --out "$OUT/run" \
    --config features-offline --no-progress
fi
wsipipe predict --checkpoint "$OUT/run/checkpoints/best.pt" --out "$OUT/test" \
  --labels "$OUT/cohort/labels.csv" --split test

echo "== 4/4 heatmaps of the test slides -> $OUT/heatmaps"
TEST_SLIDES=$(awk -F, 'NR > 1 && $3 == "test" {print $1}' "$OUT/cohort/labels.csv" | paste -sd, -)
wsipipe heatmap --checkpoint "$OUT/run/checkpoints/best.pt" --stores "$OUT/tiles" \
  --out "$OUT/heatmaps" --slides "$TEST_SLIDES" --annotations "$OUT/cohort/annotations"

echo
echo "Done in $((SECONDS - start)) s. Outputs:"
echo "  slides + labels:   $OUT/cohort/slides, $OUT/cohort/labels.csv"
echo "  patch stores:      $OUT/tiles/stores/   (QC images: $OUT/tiles/qc/)"
echo "  training run:      $OUT/run/  (checkpoints/, metrics, predictions)"
echo "  test predictions:  $OUT/test/predictions.csv, $OUT/test/metrics.json"
echo "  heatmaps:          $OUT/heatmaps/"
find "$OUT/heatmaps" -name '*.png' | sort | sed 's/^/    /'
