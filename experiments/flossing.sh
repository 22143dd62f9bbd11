#!/usr/bin/env bash
# The gradient-flossing experiment of docs/flossing.md (issue 28): delayed XOR at four delays,
# one sweep per delay (task keys cannot be swept), each the union of seven methods x 3 seeds:
#   rnn, lstm, gru                                   plain
#   rnn + flossing before training                   (500 steps)
#   rnn + flossing before and during training        (500 before, 500 at epochs 6 and 11)
#   lipschitz (the paper's beta 0.75, gamma 0.001, eps 0.03), plain and with both phases
# The reference setting (Engelken 2023) scaled to two CPU cores: tanh RNN N=64, weights
# U(-p, p) with p = 0.2165 (recurrent gain 1: the variance of the reference's N(0, 1/N)),
# T=300, batch 16, AdamW lr 1e-3 (weight decay 0.01), clipping at 1, 15 epochs of 2000
# sequences;
# flossing k=32 (half the state; k=60, experiments/flossing_k.sh, costs twice as much per step), 16 transient + 55 averaged
# steps, batch 16, Adam lr 1e-3.
#
#   OUT=~/lrnn-runs/flossing bash experiments/flossing.sh      # resumable: run it again
set -euo pipefail
OUT=${OUT:-$HOME/lrnn-runs/flossing}
LRNN=${LRNN:-lipschitz-rnn}
DELAYS=${DELAYS:-"20 40 80 10"}
mkdir -p "$OUT"
. "$(dirname "$0")/flossing_common.sh"
for d in $DELAYS; do
  spec="$OUT/delay$d.toml"
  {
    spec_head "$d" "flossing experiment: delayed XOR, delay $d, T=300, seven methods x 3 seeds" \
      "lr = 1e-3"
    cat <<EOF

[[grid]]
model = ["rnn"]
"model.init_scale" = [0.2165]
"flossing.before" = [0, 500]
seed = [0, 1, 2]

[[grid]]
model = ["rnn"]
"model.init_scale" = [0.2165]
"flossing.before" = [500]
"flossing.every" = [5]
"flossing.during" = [500]
seed = [0, 1, 2]

[[grid]]
model = ["lstm", "gru"]
seed = [0, 1, 2]

[[grid]]
$LIPSCHITZ_PAPER
"model.eps" = [0.03]
seed = [0, 1, 2]

[[grid]]
$LIPSCHITZ_PAPER
"model.eps" = [0.03]
"flossing.before" = [500]
"flossing.every" = [5]
"flossing.during" = [500]
seed = [0, 1, 2]
$SPEC_TAIL
EOF
  } > "$spec"
  run_sweep "$spec" "$OUT/delay$d"
done
