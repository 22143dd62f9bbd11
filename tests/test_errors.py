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


# --- output paths and damaged files (lipschitz_rnn._io) -----------------------------------------
def test_paths_that_cannot_be_created_name_path_and_reason(tmp_path):
    import pickle

    from lipschitz_rnn._io import (
        WriteError,
        atomic_write_text,
        check_creatable_dir,
        ensure_dir,
        write_json,
    )

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for call, target in ((lambda: ensure_dir(blocker / "a" / "b"), blocker / "a" / "b"),
                         (lambda: check_creatable_dir(blocker / "a"), blocker / "a"),
                         (lambda: atomic_write_text(blocker / "r.html", "<p>"), blocker / "r.html"),
                         (lambda: write_json(blocker / "d" / "x.json", {}, checksum=True),
                          blocker / "d" / "x.json")):
        with pytest.raises(WriteError) as e:
            call()
        assert e.value.path == target and e.value.errno == 20
        assert str(e.value).endswith(f"{target}: Not a directory ({blocker} is a file)")
        assert isinstance(e.value, OSError) and "\n" not in str(e.value)
        back = pickle.loads(pickle.dumps(e.value))  # travels to the other ranks of a run
        assert type(back) is WriteError and str(back) == str(e.value)
    assert blocker.read_text() == "x" and list(tmp_path.iterdir()) == [blocker]
    check_creatable_dir(tmp_path / "new" / "deeper")  # writes nothing
    assert ensure_dir(tmp_path / "new" / "deeper").is_dir()


def test_damaged_json_and_checksum_files_are_named(tmp_path):
    from lipschitz_rnn._io import DamagedFileError, checksum_path, read_json, write_json

    path = tmp_path / "results.json"
    write_json(path, {"a": 1}, checksum=True)
    assert read_json(path) == {"a": 1}
    checksum_path(path).write_text("not a checksum\n")
    with pytest.raises(DamagedFileError, match="checksum file .*results.json.sha256.* is damaged"):
        read_json(path)
    checksum_path(path).unlink()  # a file of an older version: read unverified
    path.write_text('{"a": 2}')
    assert read_json(path) == {"a": 2}
    path.write_text('{"a": ')
    with pytest.raises(DamagedFileError, match="results.json is damaged .not JSON"):
        read_json(path)


def test_resume_configuration_differences():
    from lipschitz_rnn.runs.config import TrainConfig, config_differences, resume_overrides_from

    run = TrainConfig(hidden_size=8, epochs=2, model_kwargs={"eps": 0.3}).validate()
    same = TrainConfig(hidden_size=8, epochs=2, model_kwargs={"eps": 0.3}, tensorboard=True,
                       description="another text").validate()
    assert config_differences(run, same) == {}
    longer = TrainConfig(hidden_size=8, epochs=5, lr=0.001, model_kwargs={"eps": 0.3}).validate()
    assert resume_overrides_from("run", run, longer) == {"epochs": 5, "lr": 0.001}
    other = TrainConfig(hidden_size=16, epochs=5, model_kwargs={"eps": 0.1, "solver": "rk2"})
    assert config_differences(run, other.validate()) == {
        "hidden_size": (8, 16), "model.eps": (0.3, 0.1), "model.solver": (None, "rk2"),
        "epochs": (2, 5)}
    with pytest.raises(ValueError, match=r"hidden_size: 8 in the run, 16 now; model.eps: 0.3 "
                                         r"in the run, 0.1 now; model.solver: None"):
        resume_overrides_from("run", run, other)


def test_resume_takes_config_or_overrides(tmp_path):
    from lipschitz_rnn.runs.config import TrainConfig
    from lipschitz_rnn.train.loop import train

    with pytest.raises(ValueError, match="config .* or overrides .*, not both"):
        train(TrainConfig(), tmp_path, resume=True, overrides={"epochs": 3})
