"""What the commands share: the console, process settings, the training front-end."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys

import torch
from rich.console import Console

from .. import _process

console = Console()

#: width for output that is not a terminal (log files, pipes): lines are never wrapped
UNWRAPPED_WIDTH = 10_000


class _Stdout(io.TextIOBase):
    """``sys.stdout`` (looked up at every write, so captured output works), which survives a
    closed pipe (``lipschitz-rnn ... | head``): after a BrokenPipeError output goes nowhere and
    the command carries on (a training run still writes its results)."""

    broken = False

    def write(self, text: str) -> int:
        if not _Stdout.broken:
            try:
                return sys.stdout.write(text)
            except BrokenPipeError:
                _Stdout._silence()
        return len(text)

    def flush(self) -> None:
        if not _Stdout.broken:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _Stdout._silence()

    def isatty(self) -> bool:
        return not _Stdout.broken and sys.stdout.isatty()

    @staticmethod
    def _silence() -> None:
        _Stdout.broken = True
        try:  # also silence the interpreter's final flush of stdout
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass


def configure_console() -> None:
    """Output of one command: pipe-safe, and unwrapped when stdout is not a terminal."""
    console.file = _Stdout()
    terminal = sys.stdout.isatty()
    console.soft_wrap = not terminal
    console.width = None if terminal else UNWRAPPED_WIDTH


def data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: $LIPSCHITZ_RNN_DATA, else ~/.cache/lipschitz_rnn)",
    )


def distributed_args(parser: argparse.ArgumentParser) -> None:
    """Options of a run under ``torchrun`` (settings of the processes, not of the run: they may
    differ between a run and its resumption)."""
    parser.add_argument(
        "--dist-backend",
        default=None,
        metavar="NAME",
        help="under torchrun: the process-group backend (default: $LIPSCHITZ_RNN_DIST_BACKEND, "
        "else 'cpu:gloo,cuda:nccl' with CUDA, else 'gloo')",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before it stops with an "
        "error (default: $LIPSCHITZ_RNN_DIST_TIMEOUT, else 600)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads of this process (each process under torchrun: default 1, or "
        "$OMP_NUM_THREADS when set)",
    )


def dist_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`distributed_args` options as keyword arguments of :func:`run_training`."""
    return {"dist_backend": args.dist_backend, "dist_timeout": args.dist_timeout,
            "threads": args.threads}


def _set_threads(threads: int | None, dist) -> None:
    """``--threads``, else one thread per process when several share the machine and
    ``OMP_NUM_THREADS`` does not say otherwise (torchrun sets it to 1 itself)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    elif (dist.enabled and "OMP_NUM_THREADS" not in os.environ
          and os.environ.get("LOCAL_WORLD_SIZE", "2") != "1"):
        torch.set_num_threads(1)


class StopOnSigint:
    """First Ctrl-C asks the loop to stop at the next step (it then saves a checkpoint)."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]stopping after this step (Ctrl-C again to abort)...[/]")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False

    def __call__(self) -> bool:
        return self.requested


def process_settings() -> str:
    """Process-wide CPU settings for training and benchmarking (the CLI owns the process; the
    library never changes them): see :func:`lipschitz_rnn._process.configure_process`."""
    return _process.configure_process()


def run_training(config, out, *, data_dir=None, resume=False, force=False, overrides=None,
                 resume_from="last", callbacks=(), dist_backend=None, dist_timeout=None,
                 threads=None) -> dict:
    """Train with a tqdm progress bar and Ctrl-C handling; print a summary. ``callbacks`` go to
    the loop (e.g. TensorBoard logging). Under ``torchrun`` joins the process group
    (``dist_backend``, ``dist_timeout``) and only rank 0 reports progress; ``threads``: see
    :func:`distributed_args`."""
    from ..train.distributed import init_from_env

    dist = init_from_env(backend=dist_backend, timeout_s=dist_timeout)
    try:
        _set_threads(threads, dist)
        if not dist.is_main:  # the other ranks report errors only
            logging.getLogger().setLevel(logging.ERROR)
        results = _train_and_report(config, out, dist, data_dir=data_dir, resume=resume,
                                    force=force, overrides=overrides, resume_from=resume_from,
                                    callbacks=callbacks)
    except BaseException as e:
        # the others may already wait at the final barrier: they stop at once with this error
        dist.report_failure(e)
        raise
    else:
        dist.finish()  # every rank ended well, or this one raises the error of one that did not
        return results
    finally:
        dist.close()


def _train_and_report(config, out, dist, **kw) -> dict:
    """The run with rank 0's progress bar, epoch lines and summary."""
    from tqdm import tqdm

    from ..train.loop import train

    process_settings()
    bar = {"bar": None, "epoch": None}

    def progress(p) -> None:
        if bar["epoch"] != p.epoch:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(
                total=p.steps_per_epoch,
                desc=f"epoch {p.epoch}",
                unit="batch",
                initial=p.step - 1,
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )  # no bar when stderr is not a terminal
            bar["epoch"] = p.epoch
        b = bar["bar"]
        b.update(1)
        b.set_postfix(
            loss=f"{p.loss:.4f}", **{p.metric_name: f"{p.metric:.4f}"}, seq_s=f"{p.seq_per_s:.0f}"
        )

    def epoch_end(rec: dict) -> None:
        if bar["bar"] is not None:
            bar["bar"].close()
            bar["bar"] = None
            bar["epoch"] = None
        parts = [f"epoch {rec['epoch']:3d}"]
        for k, v in rec.items():
            if k in ("epoch", "lyapunov"):
                continue
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        if "lyapunov" in rec:
            parts.append(f"lambda_max {rec['lyapunov']['max']:.4f}")
        console.print("  ".join(parts))

    with StopOnSigint() as stop:
        results = train(
            config,
            out,
            progress=progress if dist.is_main else None,
            should_stop=stop,
            epoch_end=epoch_end if dist.is_main else None,
            dist=dist,
            **kw,
        )
    if bar["bar"] is not None:
        bar["bar"].close()
    if not dist.is_main:
        return results
    console.print(
        f"[bold]test[/] {json.dumps(results['test'])}  "
        f"(best valid epoch {results['best_valid']['epoch']}, "
        f"{results['num_parameters']} parameters, {results['wall_time_s']:.1f} s)"
    )
    console.print(f"run directory: {out}")
    return results
