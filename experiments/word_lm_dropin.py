"""The setting of PyTorch's word-level language-model example, with the recurrent layer swapped.

A user's script, written the way that example trains (not copied from it): embedding ->
recurrent layer (2 layers, dropout between them) -> linear decoder (not tied), dropout 0.2 on the
embedding and on the output, plain SGD ``p -= lr * grad`` after ``clip_grad_norm_(0.25)``, batch
20, bptt 35, the hidden state carried (detached) from one batch to the next through the whole
epoch, lr divided by 4 after an epoch whose validation loss does not improve. The only thing
that changes between runs is the layer, built by ``lipschitz_rnn.models.build(--model, ...)``
(``rnn`` is torch.nn.RNN(tanh), ``lstm`` torch.nn.LSTM, ``lipschitz`` the Lipschitz RNN with
the keywords given by ``--kw``).

Data: word-level PTB from ``$LIPSCHITZ_RNN_DATA/ptb`` (``ptb.{train,valid,test}.txt``), the
training file cut to its first ``--train-bytes`` (at a line boundary); valid and test whole.
The vocabulary is that of the three files, as in the example.

``--trace FILE`` writes one JSON line per training batch with what decides the layer's
stability: per Lipschitz cell the spectral abscissa of ``A``, the largest ``|R(eps lambda)|``
over eigenvalues ``lambda`` of ``A`` (``R`` the solver's stability polynomial: ``1 + z`` for
Euler, so the spectral radius of the update's linear part ``I + eps A``), the same for the
Jacobian ``A + diag(1 - tanh^2(W h + U x + b)) W`` at the last step of the batch (largest over
4 sequences), ``||A||_2``, ``||W||_2``, ``||M_A||_F``, ``||M_W||_F``, and the largest norm of
the carried hidden state per layer; plus the loss and the gradient norm before clipping.

Usage::

    LIPSCHITZ_RNN_DATA=../shared/data python experiments/word_lm_dropin.py --model lipschitz \
        --lr 20 --epochs 3 [--kw parametrization=stable] [--trace trace.jsonl] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipschitz_rnn.models import LipschitzRNN, build
from lipschitz_rnn.models.solvers import stability_polynomial


# ---------------------------------------------------------------------------------------------
# data
def read_words(path: Path, max_bytes: int | None = None) -> list[str]:
    text = path.read_text()
    if max_bytes is not None and len(text) > max_bytes:
        text = text[: text.rfind("\n", 0, max_bytes) + 1]
    words: list[str] = []
    for line in text.splitlines():
        words.extend(line.split() + ["<eos>"])
    return words


def load_ptb(root: Path, train_bytes: int):
    train = read_words(root / "ptb.train.txt", train_bytes)
    valid = read_words(root / "ptb.valid.txt")
    test = read_words(root / "ptb.test.txt")
    vocab: dict[str, int] = {}
    for w in (*train, *valid, *test):
        vocab.setdefault(w, len(vocab))

    def ids(ws):
        return torch.tensor([vocab[w] for w in ws], dtype=torch.long)

    return ids(train), ids(valid), ids(test), len(vocab)


def columns(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(steps, batch): the token stream cut into ``batch`` contiguous columns."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n).t().contiguous()


# ---------------------------------------------------------------------------------------------
# model
class WordLM(nn.Module):
    def __init__(self, name: str, ntoken: int, emsize: int, nhid: int, nlayers: int,
                 dropout: float, **kw) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, emsize)
        self.rnn = build(name, emsize, nhid, num_layers=nlayers, dropout=dropout, **kw)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid, self.lstm = nlayers, nhid, name == "lstm"
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        logits = self.decoder(self.drop(out))
        return torch.log_softmax(logits, -1), hidden

    def init_hidden(self, batch: int):
        z = self.decoder.weight.new_zeros(self.nlayers, batch, self.nhid)
        return (z, z.clone()) if self.lstm else z


def detach(h):
    return tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach()


# ---------------------------------------------------------------------------------------------
# what decides stability, measured on the live weights
def _max_abs_R(eigs: np.ndarray, eps: float, coeffs: tuple[float, ...]) -> float:
    z = eps * eigs
    return float(np.abs(sum(c * z**k for k, c in enumerate(coeffs))).max())


def trace_cells(model: WordLM, tokens: torch.Tensor, hidden) -> dict:
    """Stability figures of every Lipschitz cell on the batch ``tokens`` from ``hidden``."""
    rnn = model.rnn
    rec: dict = {}
    if isinstance(hidden, torch.Tensor):
        rec["h_norm"] = [float(h.norm(dim=-1).max()) for h in hidden]
    if not isinstance(rnn, LipschitzRNN):
        return rec
    with torch.no_grad():
        x = model.encoder(tokens)
        for l, cell in enumerate(rnn.cells):
            A, W = cell.A.double(), cell.W.double()
            R = stability_polynomial(cell.solver)
            eA = torch.linalg.eigvals(A).numpy()
            u = cell.input_projection(x).double()
            hs, _ = cell.scan(u, hidden[l].double(), (A, W, torch.cat([A, W], 0).T))
            h_prev = hs[-2] if hs.shape[0] > 1 else hidden[l].double()
            s = 1 - torch.tanh(h_prev[:4] @ W.T + u[-1, :4]) ** 2
            absc_J, rad_J = -math.inf, 0.0
            for row in s:
                eJ = torch.linalg.eigvals(A + row[:, None] * W).numpy()
                absc_J = max(absc_J, float(eJ.real.max()))
                rad_J = max(rad_J, _max_abs_R(eJ, cell.eps, R))
            rec[f"cell{l}"] = {
                "absc_A": float(eA.real.max()),
                "R_A": _max_abs_R(eA, cell.eps, R),
                "absc_J": absc_J,
                "R_J": rad_J,
                "norm_A": float(torch.linalg.matrix_norm(A, 2)),
                "norm_W": float(torch.linalg.matrix_norm(W, 2)),
                "fro_MA": float(cell.M_A.norm()),
                "fro_MW": float(cell.M_W.norm()),
            }
            x = hs.to(x.dtype)
    return rec


# ---------------------------------------------------------------------------------------------
def evaluate(model: WordLM, data: torch.Tensor, bptt: int) -> float:
    model.eval()
    hidden = model.init_hidden(data.shape[1])
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, bptt):
            n = min(bptt, data.shape[0] - 1 - i)
            out, hidden = model(data[i : i + n], hidden)
            total += float(nn.functional.nll_loss(out.reshape(-1, out.shape[-1]),
                                                  data[i + 1 : i + 1 + n].reshape(-1),
                                                  reduction="sum"))
            count += n * data.shape[1]
    return total / count


def train_epoch(model, data, lr, args, trace_file, epoch) -> tuple[float, bool]:
    model.train()
    hidden = model.init_hidden(args.batch)
    total, nb = 0.0, 0
    for b, i in enumerate(range(0, data.shape[0] - 1, args.bptt)):
        n = min(args.bptt, data.shape[0] - 1 - i)
        x, y = data[i : i + n], data[i + 1 : i + 1 + n]
        hidden = detach(hidden)
        rec = trace_cells(model, x, hidden) if trace_file else None
        model.zero_grad()
        out, hidden = model(x, hidden)
        loss = nn.functional.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), args.clip))
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        if trace_file:
            rec.update(epoch=epoch, batch=b, loss=loss.item(), grad_norm=gnorm)
            trace_file.write(json.dumps(rec) + "\n")
        total, nb = total + loss.item(), nb + 1
        if not math.isfinite(loss.item()):
            return float("nan"), True
        if args.max_batches and nb >= args.max_batches:
            break
    return total / nb, False


def parse_kw(items: list[str]) -> dict:
    kw = {}
    for it in items:
        k, v = it.split("=", 1)
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    return kw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lipschitz", help="rnn, lstm, lipschitz, ...")
    ap.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword of the layer (JSON value or bare string), e.g. eps=0.03")
    ap.add_argument("--lr", type=float, default=20.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-bytes", type=int, default=1_000_000)
    ap.add_argument("--emsize", type=int, default=64)
    ap.add_argument("--nhid", type=int, default=64)
    ap.add_argument("--nlayers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--eval-batch", type=int, default=10)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--max-batches", type=int, default=0, help="stop an epoch after this many")
    ap.add_argument("--trace", help="JSON lines, one per training batch")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    root = Path(os.environ.get("LIPSCHITZ_RNN_DATA", "~/.cache/lipschitz_rnn")).expanduser()
    train, valid, test, ntoken = load_ptb(root / "ptb", args.train_bytes)
    train_c = columns(train, args.batch)
    valid_c, test_c = columns(valid, args.eval_batch), columns(test, args.eval_batch)
    model = WordLM(args.model, ntoken, args.emsize, args.nhid, args.nlayers, args.dropout,
                   **parse_kw(args.kw))
    trace_file = open(args.trace, "w") if args.trace else None  # noqa: SIM115
    lr, best = args.lr, None
    epochs = []
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        tr, diverged = train_epoch(model, train_c, lr, args, trace_file, epoch)
        va = evaluate(model, valid_c, args.bptt) if not diverged else float("nan")
        epochs.append({"epoch": epoch, "lr": lr, "train_loss": tr, "valid_ppl": math.exp(va)
                       if math.isfinite(va) and va < 700 else float("nan")})
        print(json.dumps(epochs[-1]), flush=True)
        if diverged:
            break
        if best is None or va < best:
            best, best_state = va, copy.deepcopy(model.state_dict())
        else:
            lr /= 4.0
    if not diverged:
        model.load_state_dict(best_state)  # the example tests the best-validation model
    te = evaluate(model, test_c, args.bptt) if not diverged else float("nan")
    summary = {
        "model": args.model, "kw": parse_kw(args.kw), "lr": args.lr,
        "train_tokens": train.numel(), "vocab": ntoken, "epochs": epochs,
        "test_ppl": math.exp(te) if math.isfinite(te) and te < 700 else float("nan"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if trace_file:
        trace_file.close()


if __name__ == "__main__":
    main()
