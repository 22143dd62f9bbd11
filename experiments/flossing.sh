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
for d in $DELAYS; do
  spec="$OUT/delay$d.toml"
  cat > "$spec" <<EOF
task = "delayed-xor"
model = "rnn"
description = "flossing experiment: delayed XOR, delay $d, T=300, seven methods x 3 seeds"

[set]
hidden_size = 64
epochs = 15
batch_size = 16
optimizer = "adamw"
lr = 1e-3
weight_decay = 0.01
clip_grad_norm = 1.0
[set.task]
delay = $d
length = 300
n_train = 2000
n_valid = 500
n_test = 1000
[set.flossing]
k = 32
warmup = 16
steps = 55
batch = 16
lr = 1e-3

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
model = ["lipschitz"]
"model.beta" = [0.75]
"model.gamma_A" = [0.001]
"model.gamma_W" = [0.001]
"model.eps" = [0.03]
"model.init_std" = [0.1]
seed = [0, 1, 2]

[[grid]]
model = ["lipschitz"]
"model.beta" = [0.75]
"model.gamma_A" = [0.001]
"model.gamma_W" = [0.001]
"model.eps" = [0.03]
"model.init_std" = [0.1]
"flossing.before" = [500]
"flossing.every" = [5]
"flossing.during" = [500]
seed = [0, 1, 2]

[lyapunov]
at_epochs = [0, 1, 15]
k = 32
batch = 8
warmup = 0
EOF
  if [ -f "$OUT/delay$d/sweep.json" ]; then
    "$LRNN" sweep --resume --out "$OUT/delay$d" --max-concurrent 2
  else
    "$LRNN" sweep "$spec" --out "$OUT/delay$d" --max-concurrent 2
  fi
done
