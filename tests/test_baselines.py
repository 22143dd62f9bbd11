"""Every model of the registry learns a tiny problem, and the baselines follow their papers."""

import pytest
import torch

from lipschitz_rnn.models import MODELS, CoRNNCell, ExpRNNCell, SequenceModel, build

D = torch.float64


def toy_problem(n=64, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n, 2, generator=g)
    y = (x[:, :, 0].sum(0) > 0).long()
    return x, y


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_learns(name):
    torch.manual_seed(0)
    x, y = toy_problem()
    # short sequences: use steps large enough for the state to move in 6 steps
    kw = {"eps": 0.5} if name in ("lipschitz", "odernn", "antisymmetric") else {}
    if name == "cornn":
        kw = {"dt": 0.4}
    model = SequenceModel(build(name, 2, 16, **kw), 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], (name, losses[0], losses[-1])


def test_exprnn_is_orthogonal():
    cell = ExpRNNCell(2, 6, dtype=D)
    with torch.no_grad():
        cell.log_hh.normal_()
    Q = cell.weight_hh
    torch.testing.assert_close(Q @ Q.T, torch.eye(6, dtype=D))


def test_cornn_step_formula():
    cell = CoRNNCell(2, 3, dt=0.1, gamma=2.0, epsilon=3.0, dtype=D)
    y, z = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    x = torch.randn(4, 2, dtype=D)
    y1, z1 = cell(x, (y, z))
    Wy, Wz = cell.weight_hh[:, :3], cell.weight_hh[:, 3:]
    pre = y @ Wy.T + z @ Wz.T + x @ cell.weight_ih.T + cell.bias_ih
    z_ref = z + 0.1 * (torch.tanh(pre) - 2.0 * y - 3.0 * z)
    torch.testing.assert_close(z1, z_ref)
    torch.testing.assert_close(y1, y + 0.1 * z_ref)


def test_antisymmetric_matrix_and_step():
    rnn = build("antisymmetric", 2, 4, gamma=0.1, eps=0.2, dtype=D)
    cell = rnn.cells[0]
    (Mt,) = cell.recurrence()
    M = Mt.T
    torch.testing.assert_close(M + M.T, -0.2 * torch.eye(4, dtype=D))
    h, x = torch.randn(3, 4, dtype=D), torch.randn(3, 2, dtype=D)
    torch.testing.assert_close(
        cell(x, h), h + 0.2 * torch.tanh(h @ M.T + x @ cell.weight_ih.T + cell.bias_ih)
    )


def test_odernn_step():
    cell = build("odernn", 2, 4, eps=0.3, dtype=D).cells[0]
    h, x = torch.randn(3, 4, dtype=D), torch.randn(3, 2, dtype=D)
    ref = h + 0.3 * torch.tanh(h @ cell.weight_hh.T + x @ cell.weight_ih.T + cell.bias_ih)
    torch.testing.assert_close(cell(x, h), ref)


def test_irnn_init():
    rnn = build("irnn", 2, 4)
    torch.testing.assert_close(rnn.weight_hh_l0, torch.eye(4))
    assert rnn.bias_hh_l0.abs().sum() == 0 and rnn.nonlinearity == "relu"


def test_sequence_model_modes():
    from torch.nn.utils.rnn import pack_sequence

    rnn = build("lipschitz", 3, 5, dtype=D)
    m = SequenceModel(rnn, 4, mode="last")
    x = torch.randn(6, 2, 3, dtype=D)
    assert m(x).shape == (2, 4)
    seqs = [torch.randn(6, 3, dtype=D), torch.randn(3, 3, dtype=D)]
    y = m(pack_sequence(seqs, enforce_sorted=False))
    torch.testing.assert_close(y[1], m(seqs[1].unsqueeze(1))[0])
    m_all = SequenceModel(rnn, 4, mode="all")
    out, h = m_all(x, return_state=True)
    assert out.shape == (6, 2, 4) and h.shape == (1, 2, 5)
    lm = SequenceModel(build("lstm", 8, 5), 11, mode="all", vocab_size=11)
    assert lm(torch.randint(0, 11, (7, 2))).shape == (7, 2, 11)


def test_lstm_forget_bias():
    torch.manual_seed(0)
    plain = build("lstm", 3, 5, num_layers=2)
    torch.manual_seed(0)
    same = build("lstm", 3, 5, num_layers=2, forget_bias=None)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), same.parameters(), strict=True))
    torch.manual_seed(0)
    fb = build("lstm", 3, 5, num_layers=2, forget_bias=1.0)
    for layer in range(2):
        b_ih, b_hh = getattr(fb, f"bias_ih_l{layer}"), getattr(fb, f"bias_hh_l{layer}")
        ref_ih, ref_hh = getattr(plain, f"bias_ih_l{layer}"), getattr(plain, f"bias_hh_l{layer}")
        assert torch.equal(b_ih[5:10] + b_hh[5:10], torch.ones(5))
        # the other gates keep torch's initialisation
        for g in (slice(0, 5), slice(10, 20)):
            assert torch.equal(b_ih[g], ref_ih[g]) and torch.equal(b_hh[g], ref_hh[g])
    with pytest.raises(ValueError, match="forget_bias"):
        build("lstm", 3, 5, bias=False, forget_bias=1.0)
