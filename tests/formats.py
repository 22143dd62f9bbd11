"""Tiny data sets written in the real file formats (idx for MNIST, Mikolov's PTB text),
shared by the loader tests and the CLI fault tests."""

import gzip

import numpy as np

N_TRAIN, N_TEST = 12, 5


def idx_bytes(arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def make_images(n, offset):
    # image k: pixel p = (7 p + k + offset) mod 256, so pixel 0 identifies the image
    p = np.arange(784)
    return np.stack([(7 * p + k + offset) % 256 for k in range(n)]).astype(np.uint8).reshape(n, 28, 28)


def write_mnist(folder, *, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": make_images(N_TRAIN, 0),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN) % 10,
        "t10k-images-idx3-ubyte": make_images(N_TEST, 100),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) + 3) % 10,
    }
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays



TEXTS = {
    "train": " the cat sat \n a dog ran \n",
    "valid": " the dog \n",
    "test": " a cat \n\n",
}


def write_ptb(root, texts=TEXTS):
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for s, t in texts.items():
        (folder / f"ptb.{s}.txt").write_text(t)


def write_sweep_files(root, rows, arrays, *, swept, at_epochs=(0, 1), metric=None, mode="max"):
    """A sweep directory as the sweep writes it: ``trials.csv`` (None: an empty cell),
    ``spectra.npz`` and ``sweep.json`` (``metric`` defaults to accuracy, or loss when lower is
    better)."""
    import csv
    import json

    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    with (root / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    np.savez(root / "spectra.npz", **arrays)
    name = metric or ("accuracy" if mode == "max" else "loss")
    (root / "sweep.json").write_text(json.dumps({
        "metric": {"name": name, "mode": mode}, "swept_keys": list(swept),
        "lyapunov": {"at_epochs": list(at_epochs)}}))
