#!/usr/bin/env bash
# The paper's Section 7 comparison (its Table 3) on row-wise MNIST, CPU-sized:
# four units, the same budget (hidden 128, 10 epochs, Adam 0.003 x0.1 at epoch 8, clip 1.0,
# batch 128, seed 0), then the Hessian spectrum, robustness curves (full test set) and the side-by-side table.
#   LIPSCHITZ_RNN_DATA=../shared/data bash experiments/section7-rmnist.sh [OUT=runs/section7]
set -euo pipefail
out=${1:-runs/section7}
common=(--task rmnist --set hidden_size=128 --set epochs=10 --set lr=0.003
        --set "lr_decay_epochs=[8]" --set clip_grad_norm=1.0 --set seed=0)
train() { name=$1; shift; lipschitz-rnn train "${common[@]}" --model "$@" --out "$out/$name"; }
train lipschitz     lipschitz     --set model.eps=0.1
train odernn        odernn        --set model.eps=0.1
train antisymmetric antisymmetric --set model.eps=0.1 --set model.gamma=0.01
train lstm          lstm
for m in lipschitz odernn antisymmetric lstm; do
  lipschitz-rnn hessian "$out/$m" --batches 2 --batch-size 128 --top-k 3
  lipschitz-rnn robustness "$out/$m" --batches 20 --batch-size 500 --seeds 5 \
      --weight-sigmas 0 0.01 0.05 0.1 0.2 0.5
done
lipschitz-rnn compare "$out"/{lipschitz,odernn,antisymmetric,lstm} --out "$out"
