"""Speech next-frame prediction: WAV/SPHERE readers, STFT features, both source layouts."""

import wave

import numpy as np
import pytest
import torch

from lipschitz_rnn.data import DataNotFoundError, get_task, pad_collate
from lipschitz_rnn.data.speech import N_BINS, read_audio, read_sphere, stft_logmag

BIN = 32  # 1000 Hz at 8 kHz with a 256-point FFT: 8000 / 256 = 31.25 Hz per bin


def tone(n, rate, freq=1000.0, amp=0.5, seed=0):
    t = np.arange(n) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return amp * np.sin(2 * np.pi * freq * t) + noise


def to_int16(x):
    return np.clip(np.round(np.asarray(x) * 32768), -32768, 32767).astype(np.int16)


def write_wav(path, x, rate=8000):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(x).astype("<i2").tobytes())


def write_sphere(path, x, rate=16000, big_endian=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    s = to_int16(x)
    header = (
        "NIST_1A\n   1024\n"
        "database_id -s5 TIMIT\n"
        f"sample_count -i {len(s)}\n"
        f"sample_rate -i {rate}\n"
        "channel_count -i 1\n"
        f"sample_byte_format -s2 {'10' if big_endian else '01'}\n"
        "sample_n_bytes -i 2\n"
        "sample_sig_bits -i 16\n"
        "sample_coding -s3 pcm\n"
        "end_head\n"
    ).encode()
    header += b" " * (1024 - len(header))
    path.write_bytes(header + s.astype(">i2" if big_endian else "<i2").tobytes())
    return s


def test_stft_sine_peak_and_frame_count():
    x = np.sin(2 * np.pi * 1000.0 * np.arange(4000) / 8000)
    f = stft_logmag(x)
    assert f.shape == (1 + (4000 - 256) // 128, N_BINS) == (30, 129)
    assert (f.argmax(axis=1) == BIN).all()
    assert f.dtype == np.float32 and stft_logmag(x[:200]).shape == (0, 129)


def test_sphere_reader_both_byte_orders(tmp_path):
    x = tone(1000, 16000)
    s_le = write_sphere(tmp_path / "le.WAV", x)
    s_be = write_sphere(tmp_path / "be.WAV", x, big_endian=True)
    for name, s in (("le.WAV", s_le), ("be.WAV", s_be)):
        y, rate = read_sphere(tmp_path / name)
        assert rate == 16000
        np.testing.assert_array_equal(y, s.astype(np.float32) / 32768)
    write_wav(tmp_path / "r.wav", x, rate=16000)
    y, rate = read_audio(tmp_path / "r.wav")
    assert rate == 16000 and np.array_equal(y, s_le.astype(np.float32) / 32768)


def make_tts(root):
    folder = root / "speech-tts"
    lens = {"train": [4000, 6000, 5000], "valid": [4500], "test": [3000, 300]}
    for split, ns in lens.items():
        rows = ["path\tvoice\ttranscript"]
        for i, n in enumerate(ns):
            rel = f"{split}/kal/{split}_{i}.wav"
            write_wav(folder / rel, tone(n, 8000, seed=i), 8000)
            rows.append(f"{rel}\tkal\tsome words {i}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return lens


def test_speech_tts_features_targets_and_collate(tmp_path):
    lens = make_tts(tmp_path)
    t = get_task("speech", data_dir=tmp_path, download=False, normalize=False)
    assert (t.kind, t.readout, t.metric, t.input_size, t.output_size) == (
        "regression", "all", "mse", 129, 129)
    assert t.meta["source"] == "speech-tts" and t.meta["hop"] == 128 and t.meta["n_fft"] == 256
    assert (len(t.train), len(t.valid), len(t.test)) == (3, 1, 1)  # 300 samples: < 2 frames
    assert t.meta["dropped_short"]["test"] == 1
    for i, n in enumerate(lens["train"]):
        x, y = t.train[i]
        frames = 1 + (n - 256) // 128
        assert x.shape == y.shape == (frames - 1, 129) and x.dtype == torch.float32
        assert torch.equal(x[1:], y[:-1])  # target = next frame
        samples, _ = read_audio(tmp_path / "speech-tts" / t.train.paths[i])
        assert torch.equal(torch.cat([x, y[-1:]]), torch.from_numpy(stft_logmag(samples)))
        assert (x.argmax(dim=1) == BIN).all()
    batch = t.collate_fn([t.train[0], t.train[1]])
    T = max(len(t.train[0][0]), len(t.train[1][0]))
    assert batch["x"].shape == batch["y"].shape == (T, 2, 129)
    assert batch["lengths"].tolist() == [len(t.train[0][0]), len(t.train[1][0])]
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum() == batch["lengths"].sum()
    assert torch.equal(batch["x"][: len(t.train[0][0]), 0], t.train[0][0])
    assert float(batch["x"][~batch["mask"]].abs().sum()) == 0.0
    packed = torch.nn.utils.rnn.pack_padded_sequence(batch["x"], batch["lengths"], enforce_sorted=False)
    assert packed.data.shape == (int(batch["lengths"].sum()), 129)
    assert pad_collate is t.collate_fn


def test_speech_normalisation_from_train(tmp_path, assert_serialisable):
    make_tts(tmp_path)
    raw = get_task("speech", data_dir=tmp_path, download=False, normalize=False)
    t = get_task("speech", data_dir=tmp_path, download=False)
    mean = torch.tensor(t.meta["normalize"]["mean"], dtype=torch.float64)
    std = torch.tensor(t.meta["normalize"]["std"], dtype=torch.float64)
    assert mean.shape == std.shape == (129,)
    assert_serialisable(t.meta_to_save())
    allraw = torch.cat(raw.train.features).double()
    torch.testing.assert_close(mean, allraw.mean(0))
    torch.testing.assert_close(torch.cat(t.train.features).mean(0), torch.zeros(129), atol=1e-4, rtol=0)
    # the same train statistics are applied to valid/test
    expect = ((raw.valid.features[0].double() - mean) / std).float()
    torch.testing.assert_close(t.valid.features[0], expect, atol=1e-4, rtol=1e-5)


def make_timit(root):
    d = root / "timit"
    x = tone(8000, 16000)  # 0.5 s at 16 kHz
    for rel in ["TRAIN/DR1/FAKS0/SA1.WAV", "TRAIN/DR1/FAKS0/SI943.WAV", "TRAIN/DR1/FAKS0/SX13.WAV",
                "TRAIN/DR2/MBBB0/SI12.WAV", "TRAIN/DR2/MBBB0/SX22.WAV",
                "TEST/DR1/FDAC1/SA1.WAV", "TEST/DR1/FDAC1/SI844.WAV"]:
        write_sphere(d / rel, x)
    write_wav(d / "TRAIN/DR3/MCCC0/SI5.WAV", x, rate=16000)  # converted RIFF also accepted
    write_wav(d / "TRAIN/DR1/FAKS0/SI943.WAV.wav", x, rate=16000)  # duplicate conversion: ignored


def test_timit_layout(tmp_path, assert_serialisable):
    make_timit(tmp_path)
    make_tts(tmp_path)  # timit/ wins over speech-tts/ under source="auto"
    t = get_task("speech", data_dir=tmp_path, download=False, normalize=False, seed=4)
    assert t.meta["source"] == "timit"
    n_train, n_valid = len(t.train), len(t.valid)
    assert n_train + n_valid == 5 and len(t.test) == 1  # SA sentences left out, no duplicates
    assert len(t.meta["valid_speakers"]) == 1
    assert_serialisable(t.meta_to_save())
    spk = t.meta["valid_speakers"][0]
    assert all(p.startswith("TRAIN/" + spk + "/") for p in t.valid.paths)
    assert not any(("/" + spk.split("/")[1] + "/") in p for p in t.train.paths)
    x, y = t.test[0]
    frames = 1 + (4000 - 256) // 128  # after 16 kHz -> 8 kHz
    assert x.shape == (frames - 1, 129) and torch.equal(x[1:], y[:-1])
    assert (x.argmax(dim=1) == BIN).all()  # 1 kHz survives resampling in the right bin
    with_sa = get_task("speech", data_dir=tmp_path, download=False, normalize=False, include_sa=True,
                       source="timit", max_utterances=2)
    assert len(with_sa.test) == 2 and len(with_sa.train) <= 2
    tts = get_task("speech", data_dir=tmp_path, download=False, source="speech-tts", normalize=False)
    assert tts.meta["source"] == "speech-tts"


def test_missing_speech_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        get_task("speech", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "timit" in msg and "speech-tts" in msg and str(tmp_path) in msg and "LIPSCHITZ_RNN_DATA" in msg
    assert "contains 'timit/' or 'speech-tts/'" in msg
    (tmp_path / "speech-tts").mkdir()
    (tmp_path / "speech-tts" / "train.tsv").write_text("path\tvoice\ttranscript\n")
    with pytest.raises(DataNotFoundError, match="valid.tsv"):
        get_task("speech", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="source"):
        get_task("speech", data_dir=tmp_path, source="librispeech")
