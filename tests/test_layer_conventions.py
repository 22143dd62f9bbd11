"""torch.nn.RNN calling conventions, for every layer of the package."""

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from lipschitz_rnn.models import build

D = torch.float64
OURS = ["lipschitz", "odernn", "antisymmetric", "cornn", "exprnn"]


def make(name, **kw):
    torch.manual_seed(0)
    kw.setdefault("dtype", D)
    return build(name, 3, 5, **kw)


def state_list(h):
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.parametrize("name", OURS)
def test_shapes_and_batch_first(name):
    rnn = make(name, num_layers=2)
    x = torch.randn(7, 4, 3, dtype=D)
    out, h_n = rnn(x)
    assert out.shape == (7, 4, 5)
    for h in state_list(h_n):
        assert h.shape == (2, 4, 5)
    rnn_bf = make(name, num_layers=2, batch_first=True)
    out_bf, h_bf = rnn_bf(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out_bf.transpose(0, 1), out)
    for a, b in zip(state_list(h_bf), state_list(h_n), strict=True):
        torch.testing.assert_close(a, b)
    # the last output is the last layer's final hidden state
    torch.testing.assert_close(out[-1], state_list(h_n)[0][-1])


@pytest.mark.parametrize("name", OURS)
def test_unbatched(name):
    rnn = make(name)
    x = torch.randn(6, 3, dtype=D)
    out, h_n = rnn(x)
    out_b, h_b = rnn(x.unsqueeze(1))
    assert out.shape == (6, 5)
    torch.testing.assert_close(out, out_b.squeeze(1))
    for a, b in zip(state_list(h_n), state_list(h_b), strict=True):
        assert a.shape == (1, 5)
        torch.testing.assert_close(a, b.squeeze(1))


@pytest.mark.parametrize("name", OURS)
def test_h0_and_chaining(name):
    rnn = make(name, num_layers=2)
    x = torch.randn(10, 2, 3, dtype=D)
    out, h_n = rnn(x)
    o1, h1 = rnn(x[:4])
    o2, h2 = rnn(x[4:], h1)
    torch.testing.assert_close(torch.cat([o1, o2]), out)
    for a, b in zip(state_list(h2), state_list(h_n), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_alone(name, bidirectional):
    rnn = make(name, num_layers=2, bidirectional=bidirectional)
    D_ = 2 if bidirectional else 1
    lengths = [4, 7, 2]
    seqs = [torch.randn(n, 3, dtype=D) for n in lengths]
    hx_parts = [torch.randn(2 * D_, 3, 5, dtype=D) for _ in range(rnn.num_states)]
    hx = tuple(hx_parts) if rnn.num_states == 2 else hx_parts[0]
    packed = pack_sequence(seqs, enforce_sorted=False)
    out, h_n = rnn(packed, hx)
    padded, lens = torch.nn.utils.rnn.pad_packed_sequence(out)
    assert lens.tolist() == lengths
    for i, s in enumerate(seqs):
        h_i = tuple(p[:, i] for p in hx_parts) if rnn.num_states == 2 else hx_parts[0][:, i]
        o_i, hn_i = rnn(s, h_i)
        torch.testing.assert_close(padded[: lengths[i], i], o_i, rtol=1e-12, atol=1e-12)
        for a, b in zip(state_list(h_n), state_list(hn_i), strict=True):
            torch.testing.assert_close(a[:, i], b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OURS)
def test_bidirectional_semantics(name):
    rnn = make(name, bidirectional=True)
    x = torch.randn(6, 2, 3, dtype=D)
    out, h_n = rnn(x)
    assert out.shape == (6, 2, 10)
    fwd, bwd = rnn.cells[0], rnn.cells[1]
    # the reverse direction equals the forward recurrence of cell 1 on the time-reversed input
    h = torch.zeros(2, fwd.state_size, dtype=D)
    for t in reversed(range(6)):
        h = bwd.step(h, bwd.input_projection(x[t]), bwd.recurrence())
        torch.testing.assert_close(out[t, :, 5:], h[:, :5])
    torch.testing.assert_close(state_list(h_n)[0][1], h[:, :5])
    torch.testing.assert_close(state_list(h_n)[0][0], out[-1, :, :5])


def test_dropout_between_layers():
    rnn = make("lipschitz", num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=D)
    rnn.eval()
    a, _ = rnn(x)
    b, _ = rnn(x)
    torch.testing.assert_close(a, b)
    rnn.train()
    c, _ = rnn(x)
    assert not torch.allclose(a, c)
    single = make("lipschitz", num_layers=1, dropout=0.5).train()
    y1, _ = single(x)
    y2, _ = single(x)
    torch.testing.assert_close(y1, y2)  # no dropout after the last layer


def test_cells_order_and_count():
    rnn = make("lipschitz", num_layers=3, bidirectional=True)
    assert len(rnn.cells) == 6
    assert rnn.cells[0].input_size == 3 and rnn.cells[1].input_size == 3
    assert all(c.input_size == 10 for c in rnn.cells[2:])


def test_matrices_built_once_per_forward(monkeypatch):
    from lipschitz_rnn.models import lipschitz as mod

    rnn = make("lipschitz")
    rnn.use_fused = False
    calls = {"n": 0}
    orig = mod.symmetric_skew

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(mod, "symmetric_skew", counting)
    rnn(torch.randn(50, 2, 3, dtype=D))
    assert calls["n"] == 2  # A and W, once each, for 50 steps
