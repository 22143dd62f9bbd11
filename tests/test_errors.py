"""Bad inputs raise clear errors naming the argument."""

import pytest
import torch

from lipschitz_rnn import LipschitzRNN, LipschitzRNNCell, SequenceModel, build


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"beta": 1.5}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"solver": "rk4"}, "solver"),
        ({"gamma_A": -1.0}, "gamma_A"),
    ],
)
def test_cell_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        LipschitzRNNCell(2, 3, **kw)
    with pytest.raises(ValueError, match=match):
        LipschitzRNN(2, 3, **kw)


def test_sizes():
    with pytest.raises(ValueError, match="hidden_size"):
        LipschitzRNN(2, 0)
    with pytest.raises(ValueError, match="hidden_size"):
        LipschitzRNNCell(2, -3)
    with pytest.raises(ValueError, match="input_size"):
        LipschitzRNN(0, 3)
    with pytest.raises(ValueError, match="num_layers"):
        LipschitzRNN(2, 3, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        LipschitzRNN(2, 3, dropout=1.5)


def test_wrong_input_size():
    rnn = LipschitzRNN(2, 3)
    with pytest.raises(ValueError, match="input"):
        rnn(torch.randn(5, 4, 7))
    with pytest.raises(ValueError, match="input"):
        rnn(torch.randn(5))
    with pytest.raises(ValueError, match="input"):
        LipschitzRNNCell(2, 3)(torch.randn(4, 5))


def test_wrong_hx_shape():
    rnn = LipschitzRNN(2, 3, num_layers=2)
    with pytest.raises(ValueError, match="hx"):
        rnn(torch.randn(5, 4, 2), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="hx"):
        rnn(torch.randn(5, 4, 2), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="hx"):
        LipschitzRNNCell(2, 3)(torch.randn(4, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="hx"):
        build("cornn", 2, 3)(torch.randn(5, 4, 2), torch.zeros(1, 4, 3))  # needs (y, z)


def test_unknown_model():
    with pytest.raises(ValueError, match="name"):
        build("transformer", 2, 3)


def test_sequence_model_arguments():
    with pytest.raises(ValueError, match="mode"):
        SequenceModel(LipschitzRNN(2, 3), 4, mode="first")
    with pytest.raises(ValueError, match="output_size"):
        SequenceModel(LipschitzRNN(2, 3), 0)
