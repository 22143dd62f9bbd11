"""A run's task: how each kind is batched, scored and evaluated (by the training loop and by the
analyses of run directories), and which direction of its metric is better.

Kinds (from :class:`lipschitz_rnn.data.Task`):

* ``classification`` with readout ``last`` (MNIST variants, CIFAR, digits): cross-entropy,
  accuracy in [0, 1];
* ``classification`` with readout ``all`` (copy): cross-entropy over the scored steps (targets
  ``-100`` are ignored), accuracy over the scored steps;
* ``regression`` (adding: readout ``last``; speech: readout ``all`` with a mask over padded
  frames): mean squared error;
* ``language_model`` (ptb-char): truncated BPTT over ``bptt``-step segments of ``batch_size``
  parallel streams, the hidden state carried (detached) across segments; bits per character.

Under several processes (:meth:`TaskRunner.distribute`) every rank takes its share of each
global batch: a contiguous block of the batch's items (of the streams, for a language model;
:meth:`lipschitz_rnn.train.distributed.DistContext.share`), so the batch order is the one a
single process draws. A rank left
without items (a last batch smaller than the number of ranks) runs one item with zero weight, so
that every rank takes part in the gradient all-reduce. Datasets that draw fresh random data per
item (npcifar's noise) are collated whole on every rank and then sliced, so their generator
advances exactly as in one process. Evaluation splits its batches over the ranks and sums the
per-batch numbers in batch order (the single-process sums); a language model's evaluation runs
whole on every rank (its state is carried over the split).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..analysis import lyapunov_spectrum
from ..data import get_task
from .config import TrainConfig

__all__ = ["TaskRunner", "higher_is_better", "analysis_batches", "loss_function",
           "metric_function"]

LN2 = math.log(2.0)
#: parallel streams when evaluating a language model (state carried over the whole split)
LM_EVAL_STREAMS = 10
#: the metrics of which a larger value is better (every other metric, and the loss: smaller)
HIGHER_IS_BETTER = ("accuracy",)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (``accuracy``, ``mse``, ``bpc``, ``loss``) is better:
    the one rule that the loop (best checkpoint), the sweep (its mode) and the report follow."""
    return metric in HIGHER_IS_BETTER


class _OneProcess:
    """The placement of a process that trains alone (what :meth:`TaskRunner.distribute` replaces
    with a :class:`~lipschitz_rnn.train.distributed.DistContext` of several)."""

    enabled = False
    rank = 0
    world_size = 1

    @staticmethod
    def share(n: int) -> tuple[int, int]:
        return 0, n

    @staticmethod
    def all_gather_object(obj: Any) -> list[Any]:
        return [obj]


def _to_time_major(x: Tensor) -> Tensor:
    return x.transpose(0, 1).contiguous()


def _detach_state(h):
    if h is None:
        return None
    if isinstance(h, tuple):
        return tuple(t.detach() for t in h)
    return h.detach()


class TaskRunner:
    """The task of a run (``config.task`` with ``config.task_kwargs``, loaded from ``data_dir``)
    as the loop and the analyses use it: its batches, one training step, evaluation, and the
    state a checkpoint must hold (data RNG, a language model's carried state)."""

    def __init__(self, config: TrainConfig, *, data_dir=None, device: torch.device):
        self.config = config
        self.device = device
        self.task = get_task(config.task, data_dir=data_dir, seed=config.seed, **config.task_kwargs)
        t = self.task
        self.kind = t.kind
        self.metric_name = t.metric
        self.readout = t.readout
        self.output_size = t.output_size
        self.higher_is_better = higher_is_better(t.metric)
        self.is_lm = t.kind == "language_model"
        self.vocab_size = t.output_size if self.is_lm else None
        self.model_input_size = t.input_size
        self._carry = None  # LM hidden state carried across segments (this rank's streams)
        self.dist: Any = _OneProcess()

    def distribute(self, dist: Any) -> None:
        """Take rank ``dist.rank``'s share of every training batch and split evaluation over
        the ranks (``dist``: a :class:`~lipschitz_rnn.train.distributed.DistContext`). Raises
        ValueError for what cannot be shared."""
        if dist.enabled and self.is_lm and self.config.batch_size < dist.world_size:
            raise ValueError(
                f"batch_size={self.config.batch_size} parallel streams cannot be shared by "
                f"{dist.world_size} processes: use at least one stream per process"
            )
        if dist.enabled and self._fresh_noise() and self.task.collate_fn is not None:
            raise ValueError(
                f"task {self.task.name!r} draws fresh random data into custom batches, which "
                "cannot be shared between processes; train it in one process"
            )
        self.dist = dist

    def _fresh_noise(self) -> bool:
        return isinstance(getattr(self.task.train, "generator", None), torch.Generator)

    # --- bookkeeping for the run directory -----------------------------------------------------
    def meta_to_save(self) -> dict[str, Any]:
        return dict(self.task.meta) if self.task.meta else {}

    def state(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint must hold: the data RNG (fresh noise) and the LM carry."""
        out: dict[str, Any] = {"data_rng": self.task.rng_state()}
        if self._carry is not None:
            parts = self._carry if isinstance(self._carry, tuple) else (self._carry,)
            out["carry"] = [p.detach().cpu() for p in parts]
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        """:meth:`state` with the whole LM carry (gathered from every rank: a collective, so
        every rank calls it); resumes under any number of processes."""
        out = self.state()
        if self.dist.enabled and self.is_lm:
            parts = self.dist.all_gather_object(out.get("carry"))
            if any(p is None for p in parts):
                out.pop("carry", None)
            else:
                out["carry"] = [torch.cat([p[i] for p in parts], dim=1)
                                for i in range(len(parts[0]))]
        return out

    def load_state(self, s: dict[str, Any]) -> None:
        """Restore :meth:`state` or :meth:`checkpoint_state` (a whole carry is cut to this
        rank's streams)."""
        if s and s.get("data_rng") is not None:
            self.task.set_rng_state(s["data_rng"])
        if s and s.get("carry"):
            parts = list(s["carry"])
            lo, hi = self._stream_share()
            if parts[0].shape[1] == self.config.batch_size and hi - lo != self.config.batch_size:
                parts = [p[:, lo:hi] for p in parts]
            parts = [p.to(self.device) for p in parts]
            self._carry = tuple(parts) if len(parts) > 1 else parts[0]
        else:
            self._carry = None

    def reset_epoch_state(self) -> None:
        self._carry = None

    # --- batches --------------------------------------------------------------------------------
    def _limit(self, batches: list) -> list:
        m = self.config.max_batches
        return batches[:m] if m else batches

    def train_batches(self, epoch: int) -> list:
        """The batches of ``epoch`` (1-based), in an order seeded by (seed, epoch)."""
        if self.is_lm:
            return self._limit(list(range(self._lm_num_segments("train", self.config.batch_size))))
        n = len(self.task.train)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        bs = self.config.batch_size
        return self._limit([perm[i : i + bs] for i in range(0, n, bs)])

    def _collate(self, dataset, idx: Tensor):
        items = [dataset[int(i)] for i in idx]
        if self.task.collate_fn is not None:
            return self.task.collate_fn(items)
        xs, ys = zip(*items, strict=True)
        return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])

    # --- language model streams -----------------------------------------------------------------
    def _lm_stream(self, split: str, batch_size: int) -> Tensor:
        key = (split, batch_size)
        cache = self.__dict__.setdefault("_lm_cache", {})
        if key not in cache:
            cache[key] = self.task.batchify(split, batch_size)  # (N, B) long
        return cache[key]

    def _lm_num_segments(self, split: str, batch_size: int) -> int:
        data = self._lm_stream(split, batch_size)
        return max(0, math.ceil((data.shape[0] - 1) / self.config.bptt))

    def _stream_share(self) -> tuple[int, int]:
        return self.dist.share(self.config.batch_size)

    def _lm_segment(self, split: str, batch_size: int, i: int) -> tuple[Tensor, Tensor]:
        data = self._lm_stream(split, batch_size)
        start = i * self.config.bptt
        end = min(start + self.config.bptt, data.shape[0] - 1)
        return data[start:end], data[start + 1 : end + 1]

    # --- one step -----------------------------------------------------------------------------
    def _forward_loss(self, model: nn.Module, batch, hx=None):
        """(loss, metric_sum, count, sequences, new_state) of one batch."""
        dev = self.device
        if self.is_lm:
            x, y = batch
            x, y = x.to(dev), y.to(dev)
            logits, h = model(x, hx, return_state=True)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            return loss, 0.0, y.numel(), x.shape[1], h
        if self.task.collate_fn is not None and isinstance(batch, dict):
            x, y, mask = batch["x"].to(dev), batch["y"].to(dev), batch["mask"].to(dev)
            out = model(x)  # time-major padded (T, B, F); causal, so padding never leaks back
            m = mask.unsqueeze(-1).to(out.dtype)
            count = float(m.sum()) * out.shape[-1]
            sq = ((out - y) ** 2 * m).sum()
            loss = sq / count
            return loss, float(sq.detach()), count, x.shape[1], None
        x, y = batch
        x, y = _to_time_major(x.to(dev)), y.to(dev)
        out = model(x)
        if self.kind == "classification":
            if self.readout == "all":
                y = y.T if y.shape[0] == x.shape[1] else y  # (T, B)
                logits = out.reshape(-1, out.shape[-1])
                yy = y.reshape(-1)
                loss = F.cross_entropy(logits, yy, ignore_index=-100)
                scored = yy != -100
                correct = (logits.argmax(-1)[scored] == yy[scored]).sum()
                return loss, float(correct), float(scored.sum()), x.shape[1], None
            loss = F.cross_entropy(out, y)
            correct = (out.argmax(-1) == y).sum()
            return loss, float(correct), y.shape[0], x.shape[1], None
        y = y.reshape(out.shape).to(out.dtype)
        loss = F.mse_loss(out, y)
        return loss, float(loss.detach()) * y.numel(), y.numel(), x.shape[1], None

    def train_step(self, model: nn.Module, batch):
        """(loss, metric_sum, count, sequences) of this rank's share of ``batch``: ``loss`` is
        the mean over the share's ``count`` scored elements (zero-weighted for an empty share)."""
        if self.is_lm:
            x, y = self._lm_segment("train", self.config.batch_size, int(batch))
            if self.dist.enabled:
                lo, hi = self._stream_share()
                x, y = x[:, lo:hi], y[:, lo:hi]
            loss, ms, count, seqs, h = self._forward_loss(model, (x, y), self._carry)
            self._carry = _detach_state(h)
            return loss, ms, count, seqs
        if not self.dist.enabled:
            data = self._collate(self.task.train, batch)
            loss, ms, count, seqs, _ = self._forward_loss(model, data)
            return loss, ms, count, seqs
        lo, hi = self.dist.share(len(batch))
        empty = hi == lo
        if self._fresh_noise():  # the generator draws for every item, in the global order
            x, y = self._collate(self.task.train, batch)
            lo, hi = (0, 1) if empty else (lo, hi)
            data = (x[lo:hi], y[lo:hi])
        else:
            data = self._collate(self.task.train, batch[:1] if empty else batch[lo:hi])
        loss, ms, count, seqs, _ = self._forward_loss(model, data)
        if empty:  # takes part in the gradient all-reduce with zero gradients
            return loss * 0.0, 0.0, 0.0, 0
        return loss, ms, count, seqs

    def finish_metric(self, metric_sum: float, count: float, loss_sum: float) -> float:
        if count <= 0:
            return float("nan")
        if self.metric_name == "bpc":
            return loss_sum / count / LN2
        return metric_sum / count

    # --- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            loss_sum = metric_sum = count = 0.0
            if self.is_lm:
                bs = LM_EVAL_STREAMS
                h = None
                for i in range(self._lm_num_segments(split, bs)):
                    loss, ms, c, _, h = self._forward_loss(model, self._lm_segment(split, bs, i), h)
                    loss_sum += float(loss) * c
                    count += c
            else:
                for ls, ms, c in self._eval_batches(model, split):
                    loss_sum += ls
                    metric_sum += ms
                    count += c
            return {
                "loss": loss_sum / max(count, 1.0),
                self.metric_name: self.finish_metric(metric_sum, count, loss_sum),
            }
        finally:
            model.train(was_training)

    def _eval_batches(self, model: nn.Module, split: str) -> list[tuple[float, float, float]]:
        """(loss * count, metric sum, count) of every evaluation batch of ``split``, in order;
        under several processes each rank computes every ``world_size``-th batch."""
        ds = getattr(self.task, split)
        n = len(ds)
        bs = self.config.eval_batch_size
        starts = list(range(0, n, bs))
        d = self.dist
        mine = {}
        for i in starts[d.rank :: d.world_size]:
            batch = self._collate(ds, torch.arange(i, min(i + bs, n)))
            loss, ms, c, _, _ = self._forward_loss(model, batch)
            mine[i] = (float(loss) * c, ms, c)
        if d.enabled:
            for part in d.all_gather_object(mine):
                mine.update(part)
        return [mine[i] for i in starts]

    def sample_inputs(self, split: str, n: int) -> Tensor:
        """Time-major inputs (T, n, features) of the first ``n`` items of ``split`` (for analysis)."""
        if self.is_lm:
            x, _ = self._lm_segment(split, n, 0)
            return x
        ds = getattr(self.task, split)
        batch = self._collate(ds, torch.arange(min(n, len(ds))))
        if isinstance(batch, dict):
            return batch["x"]
        return _to_time_major(batch[0])

    def lyapunov_summary(self, model: nn.Module) -> dict[str, Any]:
        inputs = self.sample_inputs("valid", self.config.lyapunov_batch).to(self.device)
        k = self.config.lyapunov_k or None
        spec = lyapunov_spectrum(model, inputs, k=k)
        mean = spec.mean
        return {
            "max": float(mean.max()),
            "mean": float(mean.mean()),
            "median": float(mean.median()),
            "kaplan_yorke_dimension": spec.kaplan_yorke_dimension_of_mean,
            "spectrum": [float(v) for v in mean],
        }


# --- analysis helpers: batches and losses in the form ``loss_fn(model(inputs), targets)`` ------
def analysis_batches(runner: TaskRunner, split: str, n_batches: int, batch_size: int) -> list:
    """The first ``n_batches`` batches of ``split`` (0: all of it) as (time-major inputs,
    targets) pairs.

    For masked tasks (speech) the targets are ``(y, mask)``; for language models, consecutive
    ``bptt`` segments of ``batch_size`` streams (each segment starts from a zero state).
    """
    n_batches = check_int("n_batches", n_batches, ge=0)
    batch_size = check_int("batch_size", batch_size, ge=1)
    out = []
    dev = runner.device
    if runner.is_lm:
        total = runner._lm_num_segments(split, batch_size)
        for i in range(min(n_batches, total) if n_batches else total):
            x, y = runner._lm_segment(split, batch_size, i)
            out.append((x.to(dev), y.to(dev)))
        return out
    ds = getattr(runner.task, split)
    n = len(ds)
    for i in range(0, min(n, n_batches * batch_size) if n_batches else n, batch_size):
        batch = runner._collate(ds, torch.arange(i, min(i + batch_size, n)))
        if isinstance(batch, dict):
            out.append((batch["x"].to(dev), (batch["y"].to(dev), batch["mask"].to(dev))))
        else:
            out.append((_to_time_major(batch[0].to(dev)), batch[1].to(dev)))
    if not out:
        raise ValueError(f"split {split!r} of task {runner.task.name!r} is empty")
    return out


def loss_function(runner: TaskRunner):
    """The task's training loss as ``loss_fn(outputs, targets)`` (mean over scored elements)."""

    def loss_fn(out: Tensor, target) -> Tensor:
        if isinstance(target, tuple):  # (y, mask): masked MSE over valid frames
            y, mask = target
            m = mask.unsqueeze(-1).to(out.dtype)
            return ((out - y) ** 2 * m).sum() / (m.sum() * out.shape[-1])
        if runner.is_lm or (runner.kind == "classification" and runner.readout == "all"):
            if runner.readout == "all" and target.dim() == 2 and target.shape[0] == out.shape[1]:
                target = target.T
            return F.cross_entropy(
                out.reshape(-1, out.shape[-1]), target.reshape(-1), ignore_index=-100
            )
        if runner.kind == "classification":
            return F.cross_entropy(out, target)
        return F.mse_loss(out, target.reshape(out.shape).to(out.dtype))

    return loss_fn


def metric_function(runner: TaskRunner):
    """The task metric as ``metric_fn(outputs, targets) -> (sum, count)`` (pooled exactly)."""

    def metric_fn(out: Tensor, target) -> tuple[float, float]:
        if isinstance(target, tuple):
            y, mask = target
            m = mask.unsqueeze(-1).to(out.dtype)
            return float(((out - y) ** 2 * m).sum()), float(m.sum()) * out.shape[-1]
        if runner.is_lm:
            ce = F.cross_entropy(
                out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction="sum"
            )
            return float(ce) / LN2, float(target.numel())
        if runner.kind == "classification":
            if runner.readout == "all":
                t = target.T if target.shape[0] == out.shape[1] else target
                pred = out.argmax(-1)
                scored = t != -100
                return float((pred[scored] == t[scored]).sum()), float(scored.sum())
            return float((out.argmax(-1) == target).sum()), float(target.shape[0])
        y = target.reshape(out.shape).to(out.dtype)
        return float(((out - y) ** 2).sum()), float(y.numel())

    metric_fn.__name__ = runner.metric_name  # how analyses and plots label the metric
    return metric_fn
