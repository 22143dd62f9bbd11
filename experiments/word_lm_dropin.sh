#!/usr/bin/env bash
# PyTorch's word-language-model setting with the layer swapped (experiments/word_lm_dropin.py):
# nn.RNN, LSTM, the Lipschitz RNN as shipped and with parametrization="stable", at lr 20, 2, 1
# (and the stable one with eps=1.0 at lr 20, 2);
# 2 layers of 64, the first 1 MB of PTB's training file, 3 epochs, SGD with clipping 0.25,
# hidden state carried across batches. One JSON summary per run in OUT, then a table.
#   LIPSCHITZ_RNN_DATA=../shared/data bash experiments/word_lm_dropin.sh [OUT=runs/word-lm]
set -euo pipefail
out=${1:-runs/word-lm}
mkdir -p "$out"
here=$(dirname "$0")
run() { name=$1; shift; python "$here/word_lm_dropin.py" --epochs 3 --json "$out/$name.json" "$@"; }
for lr in 20 2 1; do
  run "rnn-lr$lr"              --model rnn       --lr "$lr"
  run "lstm-lr$lr"             --model lstm      --lr "$lr"
  run "lipschitz-lr$lr"        --model lipschitz --lr "$lr"
  run "lipschitz-stable-lr$lr" --model lipschitz --lr "$lr" --kw parametrization=stable
done
for lr in 20 2; do  # the stable parametrisation with a larger step
  run "lipschitz-stable-eps1-lr$lr" --model lipschitz --lr "$lr" --kw parametrization=stable --kw eps=1.0
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = sorted(Path(sys.argv[1]).glob("*.json"))
print("| run | valid ppl per epoch | test ppl | seconds |")
print("|---|---|---|---|")
for p in rows:
    r = json.loads(p.read_text())
    va = ", ".join(f"{e['valid_ppl']:.0f}" for e in r["epochs"])
    print(f"| {p.stem} | {va} | {r['test_ppl']:.0f} | {r['seconds']} |")
PY
