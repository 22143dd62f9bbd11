#!/usr/bin/env bash
# Flossing with k close to N (docs/flossing.md): the main experiment flosses k = 32 of the
# RNN's 64 exponents (half the state, for speed); the reference flosses k close to N. This runs
# the flossed RNN of experiments/flossing.sh with k = 60, both schedules (500 steps before
# training; and 500 more at epochs 6 and 11), 3 seeds, at delay 40 (the longest that k = 32
# learns) and 80 (which nothing learned). Everything else is the main experiment's.
#
#   OUT=~/lrnn-runs/flossing-k bash experiments/flossing_k.sh   # resumable: run it again
set -euo pipefail
OUT=${OUT:-$HOME/lrnn-runs/flossing-k}
LRNN=${LRNN:-lipschitz-rnn}
DELAYS=${DELAYS:-"80 40"}
mkdir -p "$OUT"
. "$(dirname "$0")/flossing_common.sh"
for d in $DELAYS; do
  spec="$OUT/delay$d.toml"
  {
    spec_head "$d" "flossing experiment, k = 60: delayed XOR, delay $d, T=300, 3 seeds" \
      "lr = 1e-3" 60 "before = 500"
    cat <<EOF

[[grid]]
"model.init_scale" = [0.2165]
seed = [0, 1, 2]

[[grid]]
"model.init_scale" = [0.2165]
"flossing.every" = [5]
"flossing.during" = [500]
seed = [0, 1, 2]
$SPEC_TAIL
EOF
  } > "$spec"
  run_sweep "$spec" "$OUT/delay$d"
done
