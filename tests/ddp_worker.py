"""One process of the distributed tests (tests/test_distributed.py), started by ``torchrun``.

``python ddp_worker.py BASE MODE ARGS...``. Every rank works in its own folder ``BASE/rank<R>``
(as if on its own machine), so any file a rank other than 0 writes there would show. Modes:

* ``cli ARGS``: the ``lipschitz-rnn`` command line, ``main(ARGS)``; exits with its status;
* ``cli-late0 ARGS``: the same, but rank 0 starts 3 s after the others (a slow host);
* ``hang ARGS``: the same, but rank 1 stops answering (sleeps) at its third training step;
* ``fail0-after ARGS``: the same, but rank 0 fails once training is over (its ``train``
  returned: every collective is done) with a WriteError, and is then slow to exit (sleeps);
* ``cases FILE``: the library's ``train`` for each case of the JSON list in ``FILE``
  (``name``, ``config`` or ``resume``, ``data_dir``, ``nan_rank``: that rank's loss becomes NaN
  at its third step); each rank records what happened in ``BASE/outcome<R>.json``.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from lipschitz_rnn.cli import main as cli_main
from lipschitz_rnn.models import _native
from lipschitz_rnn.runs import tasks
from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.train.distributed import init_from_env, origin_rank
from lipschitz_rnn.train.loop import train


def _patch_step(rank_to_patch: int, action) -> None:
    """Make ``TaskRunner.train_step`` call ``action(loss)`` at the third step of that rank."""
    if int(os.environ["RANK"]) != rank_to_patch:
        return
    original = tasks.TaskRunner.train_step
    calls = {"n": 0}

    def step(self, model, batch):
        calls["n"] += 1
        loss, ms, count, seqs = original(self, model, batch)
        if calls["n"] == 3:
            loss = action(loss)
        return loss, ms, count, seqs

    tasks.TaskRunner.train_step = step


def _hang(loss):
    time.sleep(120)
    return loss


def _nan(loss):
    return loss * float("nan")


def _fail_after_training(rank_to_fail: int) -> None:
    """Make the library's ``train`` raise on that rank after it has trained."""
    from lipschitz_rnn._io import WriteError
    from lipschitz_rnn.train import loop

    if int(os.environ["RANK"]) != rank_to_fail:
        return
    original = loop.train

    def train(*args, **kwargs):
        original(*args, **kwargs)
        raise WriteError(Path("run") / "summary.txt", "No space left on device", 28)

    loop.train = train


def run_cases(base: Path, cases: list[dict]) -> None:
    dist = init_from_env()  # one process group for every case
    original = tasks.TaskRunner.train_step
    outcome = {}
    for case in cases:
        tasks.TaskRunner.train_step = original
        if case.get("nan_rank") is not None:
            _patch_step(case["nan_rank"], _nan)
        try:
            if case.get("resume"):
                res = train(None, case["name"], resume=True, data_dir=case.get("data_dir"),
                            overrides=case.get("overrides"), dist=dist)
            else:
                res = train(TrainConfig.from_dict(case["config"]), case["name"],
                            data_dir=case.get("data_dir"), dist=dist)
            outcome[case["name"]] = {"results": res}
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            outcome[case["name"]] = {"error": type(e).__name__, "message": str(e),
                                     "origin": origin_rank(e),
                                     "traceback": traceback.format_exc()}
    outcome["native"] = _native.load() is not None  # the fused path's native CPU kernels
    (base / f"outcome{dist.rank}.json").write_text(json.dumps(outcome))
    dist.close()


def worker(argv: list[str]) -> int:
    base, mode, *rest = argv
    base = Path(base).resolve()
    work = base / f"rank{os.environ['RANK']}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    torch.set_num_threads(1)
    if mode == "cli":
        return cli_main(rest)
    if mode == "cli-late0":
        if os.environ["RANK"] == "0":
            time.sleep(3)
        return cli_main(rest)
    if mode == "hang":
        _patch_step(1, _hang)
        return cli_main(rest)
    if mode == "fail0-after":
        _fail_after_training(0)
        code = cli_main(rest)
        if os.environ["RANK"] == "0":
            time.sleep(600)  # a process slow to exit: the others must not wait for it
        return code
    if mode == "cases":
        run_cases(base, json.loads(Path(rest[0]).read_text()))
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
