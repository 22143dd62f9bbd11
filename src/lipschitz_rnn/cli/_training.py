"""The training front-end of the command line: the options of a run under ``torchrun``, and
:func:`run_training`, which trains with rank 0's progress display, stops cleanly on Ctrl-C and
prints the summary (``train``, ``quickstart``)."""

from __future__ import annotations

import argparse
import json
import logging
import os

from ._console import console, process_settings

__all__ = ["distributed_args", "dist_kwargs", "run_training"]


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
    import torch

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    elif (dist.enabled and "OMP_NUM_THREADS" not in os.environ
          and os.environ.get("LOCAL_WORLD_SIZE", "2") != "1"):
        torch.set_num_threads(1)


def run_training(config, out, *, data_dir=None, resume=False, force=False, overrides=None,
                 resume_from="last", callbacks=(), dist_backend=None, dist_timeout=None,
                 threads=None) -> dict:
    """Train with a progress display and Ctrl-C handling (callbacks of the loop,
    :mod:`._progress`); print a summary. ``callbacks`` go to the loop too (e.g. TensorBoard
    logging). Under ``torchrun`` joins the process group
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


def _train_and_report(config, out, dist, *, callbacks=(), **kw) -> dict:
    """The run with rank 0's progress display and summary, stopped cleanly by Ctrl-C."""
    from ..train.loop import train
    from ._progress import StopOnSigint, TrainingDisplay

    process_settings()
    with StopOnSigint() as stop:
        results = train(config, out, dist=dist,
                        callbacks=[*callbacks, TrainingDisplay(), stop], **kw)
    if not dist.is_main:
        return results
    console.print(
        f"[bold]test[/] {json.dumps(results['test'])}  "
        f"(best valid epoch {results['best_valid']['epoch']}, "
        f"{results['num_parameters']} parameters, {results['wall_time_s']:.1f} s)"
    )
    console.print(f"run directory: {out}")
    return results
