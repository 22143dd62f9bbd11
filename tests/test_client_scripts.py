"""Other people's training scripts, unchanged except for the recurrent layer.

Three small client patterns written the way RNN users write them for torch.nn.RNN, run with
torch.nn.RNN and with this package's layers swapped in (nothing else changes): each trains a few
steps on tiny generated data with structure and its loss must fall (mean of the last k steps
against the first k, fixed seeds, a margin).

* a word-language model in the style of PyTorch's ``word_language_model`` example: embedding,
  2-layer RNN with dropout, linear decoder, hidden state carried across batches (detached),
  SGD by hand with ``clip_grad_norm_(0.25)``, ``rnn.flatten_parameters()`` before evaluation;
* a classifier of variable-length sequences through ``pack_padded_sequence`` (unsorted lengths);
* a sequence-to-sequence model whose encoder's final state starts the decoder (teacher forcing).
"""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from lipschitz_rnn import LipschitzRNN
from lipschitz_rnn.models import AntisymmetricRNN

# the one line a user changes: how the recurrent layer is made (nn.RNN's signature)
LAYERS = {
    "nn.RNN": nn.RNN,
    "LipschitzRNN": LipschitzRNN,
    "LipschitzRNN-rk2": lambda i, h, *a, **kw: LipschitzRNN(i, h, *a, solver="rk2", **kw),
    "AntisymmetricRNN": AntisymmetricRNN,
    # the drop-in recommended at SGD learning rates (docs/results.md, "A drop-in at large
    # learning rates"): A kept inside the step's stability region, a larger step
    "LipschitzRNN-stable": lambda i, h, *a, **kw: LipschitzRNN(
        i, h, *a, parametrization="stable", eps=1.0, **kw
    ),
}


def assert_falls(losses, k, margin):
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"loss: first {k} steps {first:.3f}, last {k} steps {last:.3f}")  # shown by pytest -rP
    assert all(math.isfinite(v) for v in losses), losses
    assert last < first - margin, f"loss did not fall: first {k} {first:.3f}, last {k} {last:.3f}"


# --- word-language model -----------------------------------------------------------------------
def topic_corpus(n_tokens, vocab=16, topics=4, mean_run=12, seed=0):
    """Tokens from a hidden topic that switches now and then; each topic speaks only its own
    quarter of the vocabulary, so the unigram is uniform and a model must remember the topic."""
    g = torch.Generator().manual_seed(seed)
    per = vocab // topics
    topic = 0
    out = []
    for _ in range(n_tokens):
        if torch.rand((), generator=g) < 1.0 / mean_run:
            topic = int(torch.randint(topics, (), generator=g))
        out.append(topic * per + int(torch.randint(per, (), generator=g)))
    return torch.tensor(out)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def repackage_hidden(h):
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


class RNNModel(nn.Module):
    def __init__(self, make_rnn, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = make_rnn(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


# Known failures of the default parametrisations, kept to show what the remedy is for: with the
# hidden state carried across batches, the ODE units integrate the constant part of their input
# (tanh(U x + b) has a non-zero mean, and A, W barely damp it at the defaults gamma = 0.001 /
# 0.01): the default Lipschitz unit's state grows from |h| = 0.9 to ~40 over the 720 steps here
# and the training loss rises (2.75 -> 2.86 nats, uniform is 2.77); the antisymmetric unit's
# stays bounded but it learns nothing in 60 SGD steps (2.77 -> 2.76) while nn.RNN goes 2.76 ->
# 2.42. The remedy (issue 12, item 3; docs/results.md, "A drop-in at large learning rates") is
# parametrization="stable", the "LipschitzRNN-stable" layer, which must pass.
# (only the loss assertions may fail: an error in the pattern itself, e.g. a missing
# flatten_parameters, still fails the test)
CARRIED_STATE = pytest.mark.xfail(
    reason="default parametrisation with a carried state: grows / no learning at SGD lr 1 (use parametrization='stable')",
    raises=AssertionError,
    strict=False,
)
LM_LAYERS = [
    pytest.param(name, marks=() if name in ("nn.RNN", "LipschitzRNN-stable") else CARRIED_STATE)
    for name in sorted(LAYERS)
]


@pytest.mark.parametrize("layer", LM_LAYERS)
def test_word_language_model(layer):
    torch.manual_seed(0)
    ntokens, bptt, bsz, lr, clip = 16, 12, 8, 1.0, 0.25
    train_data = batchify(topic_corpus(bsz * 12 * 30, seed=1), bsz)
    val_data = batchify(topic_corpus(4 * 12 * 10, seed=2), 4)
    model = RNNModel(LAYERS[layer], ntokens, 16, 32, 2)
    criterion = nn.NLLLoss()

    def evaluate(data_source):
        model.eval()
        model.rnn.flatten_parameters()
        total = 0.0
        hidden = model.init_hidden(4)
        with torch.no_grad():
            for i in range(0, data_source.size(0) - 1, bptt):
                data, targets = get_batch(data_source, i, bptt)
                output, hidden = model(data, hidden)
                hidden = repackage_hidden(hidden)
                total += len(data) * criterion(output, targets).item()
        return total / (len(data_source) - 1)

    val_before = evaluate(val_data)
    losses = []
    for _epoch in range(2):
        model.train()
        hidden = model.init_hidden(bsz)
        for i in range(0, train_data.size(0) - 1, bptt):
            data, targets = get_batch(train_data, i, bptt)
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            losses.append(loss.item())
    val_after = evaluate(val_data)
    assert_falls(losses, k=10, margin=0.1)
    assert val_after < val_before - 0.1, (val_before, val_after)


# --- PackedSequence classifier -----------------------------------------------------------------
class PackedClassifier(nn.Module):
    def __init__(self, make_rnn, n_features, hidden, n_classes):
        super().__init__()
        self.rnn = make_rnn(n_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, padded, lengths):
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return self.head(h_n[-1])


def sign_of_mean_batch(g, batch=16, features=3):
    """Sequences of 3-15 steps; the class is the sign of the mean of feature 0 over the valid
    steps; padding (3.0) would bias a model that read it."""
    lengths = torch.randint(3, 16, (batch,), generator=g)
    seqs = [torch.randn(int(n), features, generator=g) for n in lengths]
    labels = torch.tensor([int(s[:, 0].mean() > 0) for s in seqs])
    return pad_sequence(seqs, batch_first=True, padding_value=3.0), lengths, labels


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_packed_sequence_classifier(layer):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    model = PackedClassifier(LAYERS[layer], 3, 24, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        padded, lengths, labels = sign_of_mean_batch(g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(padded, lengths), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert_falls(losses, k=10, margin=0.1)


# --- sequence to sequence ----------------------------------------------------------------------
class Seq2Seq(nn.Module):
    def __init__(self, make_rnn, vocab, emb, hidden):
        super().__init__()
        self.src_emb = nn.Embedding(vocab, emb)
        self.tgt_emb = nn.Embedding(vocab + 1, emb)  # + BOS
        self.encoder = make_rnn(emb, hidden)
        self.decoder = make_rnn(emb, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.bos = vocab

    def forward(self, src, tgt):
        _, h = self.encoder(self.src_emb(src))  # the encoder's final state ...
        bos = torch.full_like(tgt[:1], self.bos)
        dec_in = self.tgt_emb(torch.cat([bos, tgt[:-1]], 0))  # teacher forcing
        out, _ = self.decoder(dec_in, h)  # ... starts the decoder
        return self.out(out)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_seq2seq_encoder_decoder(layer):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    vocab = 8
    model = Seq2Seq(LAYERS[layer], vocab, 16, 32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        src = torch.randint(vocab, (6, 16), generator=g)  # (T, B), time-major
        tgt = src.flip(0)  # reverse the sequence
        opt.zero_grad()
        logits = model(src, tgt)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert_falls(losses, k=10, margin=0.1)
