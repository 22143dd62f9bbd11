# Shared by experiments/flossing.sh, flossing_baselines.sh and flossing_k.sh (sourced): the
# delayed-XOR setting of docs/flossing.md, the Lipschitz RNN's paper grid keys, the probe
# spectra, and the resumable sweep call.

# spec_head DELAY DESCRIPTION [SET_LINES] [FLOSSING_K] [FLOSSING_LINES]: the task, [set] and
# [set.flossing] of every sweep (T=300, N=64, batch 16, AdamW with weight decay 0.01, clipping
# at 1, 15 epochs of 2000 sequences; flossing 16 transient + 55 averaged steps, batch 16,
# Adam lr 1e-3, k = 32 unless given)
spec_head() {
  cat <<EOF
task = "delayed-xor"
model = "rnn"
description = "$2"

[set]
hidden_size = 64
epochs = 15
batch_size = 16
optimizer = "adamw"
weight_decay = 0.01
clip_grad_norm = 1.0
${3:-}
[set.task]
delay = $1
length = 300
n_train = 2000
n_valid = 500
n_test = 1000
[set.flossing]
k = ${4:-32}
warmup = 16
steps = 55
batch = 16
lr = 1e-3
${5:-}
EOF
}

# the Lipschitz RNN's keys of the paper's pixel-MNIST setting but for eps (a grid's lines)
LIPSCHITZ_PAPER='model = ["lipschitz"]
"model.beta" = [0.75]
"model.gamma_A" = [0.001]
"model.gamma_W" = [0.001]
"model.init_std" = [0.1]'

# the probe spectra every sweep records
SPEC_TAIL='
[lyapunov]
at_epochs = [0, 1, 15]
k = 32
batch = 8
warmup = 0'

# run_sweep SPEC OUTDIR: start the sweep, or continue it when OUTDIR holds one
run_sweep() {
  if [ -f "$2/sweep.json" ]; then
    "$LRNN" sweep --resume --out "$2" --max-concurrent 2
  else
    "$LRNN" sweep "$1" --out "$2" --max-concurrent 2
  fi
}
