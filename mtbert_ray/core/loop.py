"""The one epoch loop of every Train stage; each stage contributes a ``Step`` (its model, loss and optimizer).

The loop owns what stages share — the way Lightning's ``fit`` loop owns what ``training_step``
does not: seeding (identical initialisation on every rank, then per-rank dropout seeds),
resume from the latest checkpoint (model on its device *before* the optimizer is built and its
state loaded), per-epoch shuffled batches started before the model is built, autocast precision
(bf16 / fp16 with a gradient scaler), gradient accumulation (DDP synchronises only the last
micro-batch), progress lines with an ETA, evaluation on validation, evaluation on test only when
the epoch improves the selection metric (so the selected checkpoint carries its test metrics and
test never chooses anything), checkpoints (rank 0 writes the model; every rank its predictions)
and ``report``.

Steps implement: ``build(device)`` (returns the trainable module, unwrapped), ``optimizer_groups()``,
``loss(train_module, batch) -> dict`` (``"loss"`` plus its terms), ``predict(batch) -> [heads, B, C]``,
``save(folder)`` / ``load(folder)``, ``collate(split)`` and ``heads`` (metric prefixes).
"""
from __future__ import annotations

import contextlib
import csv
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from mtbert_ray.common.errors import NonFiniteLossError
from mtbert_ray.common.metric_names import MEAN_HEAD, METRICS, Split, best_key, metric_key
from mtbert_ray.common.progress import Progress
from mtbert_ray.core.metrics import metrics_from_confusion
from mtbert_ray.core.session import NO_SCORE, SCORE, StageSession
from mtbert_ray.core.training import (
    TimedBatches,
    autocast,
    checkpoint_dir,
    configure_device,
    confusion_matrices,
    load_training_state,
    maybe_inject_fault,
    rank_seed,
    read_training_state,
    save_training_state,
    seed_everything,
)

PREDICTIONS_DIR = "predictions"


class Step(Protocol):
    heads: list[str]

    def build(self, device: torch.device) -> torch.nn.Module: ...

    def optimizer_groups(self) -> list[dict[str, Any]]: ...

    def loss(self, train_module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...

    def collate(self, split: str): ...


@dataclass
class LoopSpec:
    """The loop's settings (from the experiment config's section of this stage)."""

    stage: str  # "co-finetune" / "distill": progress lines, fault injection, metric names
    epochs: int
    micro_batch: int  # examples per worker per forward/backward
    grad_accum_steps: int
    seed: int
    select: str  # bare metric name (accuracy, macro_f1, …) on validation
    mode: str  # max / min
    precision: str
    use_gpu: bool
    threads: float | None
    train_rows: int
    num_labels: int
    weight_decay: float = 0.0
    submission: tuple[str, list[str]] | None = None  # (file name, label per class) for unlabelled test rows
    test_labelled: bool = True

    @property
    def fault_name(self) -> str:
        return self.stage.replace("-", "")


def run_epochs(step: Step, session: StageSession, spec: LoopSpec) -> None:
    rank, world = session.rank, session.world_size
    device = session.device(spec.use_gpu)
    configure_device(device, spec.threads)
    start_epoch, best, best_epoch = 0, None, None
    with session.latest_checkpoint() as folder:
        if folder is not None:
            state = read_training_state(folder)
            start_epoch, best, best_epoch = int(state["epoch"]) + 1, state.get("best"), state.get("best_epoch")
    # The first epoch's batches start flowing while the model is built (Ray Data's pipeline start-up).
    first = _Prefetch(_batches(session, "train", step, spec, device, start_epoch)) if start_epoch < spec.epochs else None

    module, optimization = build_and_resume(step, session, spec, device)
    train_module = session.prepare_module(module)

    per_worker = spec.train_rows // world if world > 1 else spec.train_rows
    steps_per_epoch = math.ceil(per_worker / spec.micro_batch)
    for epoch in range(start_epoch, spec.epochs):
        seed_everything(rank_seed(spec.seed, rank, epoch))  # dropout: different per rank and epoch
        batches = TimedBatches(first if first is not None else _batches(session, "train", step, spec, device, epoch))
        first = None
        progress = Progress(f"[{spec.stage}] epoch {epoch + 1}/{spec.epochs}", steps_per_epoch, "steps",
                            examples_per_unit=spec.micro_batch * world, enabled=rank == 0)
        started = time.time()
        module.train()
        sums, steps = _train_pass(step, train_module, optimization, batches, progress, spec, epoch, rank)
        train_seconds = time.time() - started
        module.eval()
        metrics = {
            "epoch": epoch + 1,
            "start_epoch": start_epoch,  # > 0 when this attempt resumed from a checkpoint
            "train_seconds": train_seconds,  # the training pass of this epoch (no evaluation)
            "data_wait_seconds": batches.wait_seconds,  # of train_seconds, waiting for input batches
            "train_steps": steps,
            "train_examples_per_s": steps * spec.micro_batch * world / train_seconds if train_seconds > 0 else 0.0,
            **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()},
            **_evaluate(step, session, spec, device, Split.VALIDATION),
        }
        current = metrics[metric_key(Split.VALIDATION, spec.select, _head(step))]
        improved = best is None or (current > best if spec.mode == "max" else current < best)
        if improved:
            best, best_epoch = current, epoch + 1
        metrics[best_key(spec.select)] = best
        metrics["selected_epoch"] = best_epoch
        metrics[SCORE] = (current if spec.mode == "max" else -current) if improved else NO_SCORE
        metrics.update(getattr(step, "report_extras", dict)())
        metrics["eval_seconds"] = time.time() - started - train_seconds
        if device.type == "cuda":  # peak memory of this epoch on this rank's GPU (rank 0's is reported)
            metrics["gpu_memory_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.reset_peak_memory_stats(device)
        state = {"epoch": epoch, "best": best, "best_epoch": best_epoch, "metrics": metrics}
        _checkpoint_and_report(step, session, spec, device, optimization, metrics, state, test=improved)


def _train_pass(step: Step, train_module: torch.nn.Module, optimization: "Optimization", batches, progress: Progress,
                spec: LoopSpec, epoch: int, rank: int) -> tuple[dict[str, float], int]:
    """One epoch's optimisation steps; (sum of each loss term over the micro-batches, number of micro-batches)."""
    sums: dict[str, float] = {}
    micro = -1
    for micro, batch in enumerate(batches):
        maybe_inject_fault(spec.fault_name, epoch, micro, rank)
        terms = optimization.micro_step(step, train_module, batch)
        check_finite_loss(terms["loss"], spec, epoch, micro)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        progress.update(micro + 1, extra=f"loss {float(terms['loss'].detach()):.4f}")
    optimization.flush()  # an epoch whose micro-batches do not fill the last step: apply what was accumulated
    return sums, micro + 1


def check_finite_loss(loss: torch.Tensor, spec: "LoopSpec", epoch: int, micro: int) -> None:
    """Stop the stage at the first micro-batch whose loss is not a finite number (NaN or ±inf): nothing of the
    epoch is saved, so the last good checkpoint (the previous epoch's) stays the latest, and no student is exported."""
    if bool(torch.isfinite(loss.detach()).all()):
        return

    section = "cofinetune" if spec.fault_name == "cofinetune" else "distill"
    raise NonFiniteLossError(
        f"{spec.stage}: the loss is {float(loss.detach().float().mean())} at epoch {epoch + 1}, step {micro + 1}; "
        f"the stage stopped and keeps its last good checkpoint (epoch {epoch} at most); lower {section}.lr, "
        "or use resources.precision: fp32")


def _checkpoint_and_report(step: Step, session: StageSession, spec: LoopSpec, device: torch.device,
                           optimization: "Optimization", metrics: dict[str, Any], state: dict[str, Any], test: bool) -> None:
    """The epoch's checkpoint (rank 0: model and training state; every rank: its test predictions) and report.
    ``test``: this epoch is the selected one so far, so its test scores are measured now, once."""
    with checkpoint_dir() as folder:
        if test and session.has_dataset("test"):
            started = time.time()
            state["test"] = _evaluate(step, session, spec, device, Split.TEST, predictions=folder)
            metrics["test_eval_seconds"] = time.time() - started  # an epoch that is not selected evaluates no test
        if session.rank == 0:
            step.save(folder)
            save_training_state(folder, optimization.optimizer, state, optimization.scaler)
        has_files = session.rank == 0 or any(folder.iterdir())
        session.report(metrics, folder if has_files else None)


def build_and_resume(step: Step, session: StageSession, spec: LoopSpec, device: torch.device) -> tuple[torch.nn.Module, "Optimization"]:
    """The step's model on ``device``, then its optimizer, then — when resuming — the checkpoint's weights and
    optimizer state. In this order the optimizer's moments land on each parameter's device (a GPU after a
    preempted node's restart); loading them before the model moved left them on the CPU."""
    seed_everything(spec.seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
    module = step.build(device)
    optimizer = torch.optim.Adam(step.optimizer_groups(), weight_decay=spec.weight_decay)
    optimization = Optimization(optimizer, spec.precision, device, spec.grad_accum_steps, session.world_size)
    with session.latest_checkpoint() as folder:
        if folder is not None:
            step.load(folder)
            load_training_state(folder, optimizer, optimization.scaler)
    return module, optimization


class Optimization:
    """One optimizer step per ``grad_accum_steps`` micro-batches, under autocast, with a gradient scaler for fp16.

    Each micro-batch's loss is divided by ``grad_accum_steps``, so the accumulated gradient is the mean over
    the effective batch — the same update as one batch of that size. Under DDP, gradients are synchronised
    only on the last micro-batch of a step (``no_sync`` before). Used by the loop and by plain-PyTorch code
    (benchmarks) alike.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, precision: str = "fp32", device: torch.device | None = None,
                 grad_accum_steps: int = 1, world_size: int = 1) -> None:
        device = device or torch.device("cpu")
        self.optimizer, self.precision, self.device = optimizer, precision, device
        self.grad_accum_steps, self.world_size = grad_accum_steps, world_size
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.pending = 0
        self.unsynced = False  # the accumulated gradient holds micro-batches DDP did not all-reduce
        optimizer.zero_grad(set_to_none=True)

    def micro_step(self, step: Step, train_module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.pending += 1
        last = self.pending == self.grad_accum_steps
        skip_sync = self.world_size > 1 and not last and hasattr(train_module, "no_sync")
        with train_module.no_sync() if skip_sync else contextlib.nullcontext():
            with autocast(self.device, self.precision):
                terms = step.loss(train_module, batch)
            self.scaler.scale(terms["loss"] / self.grad_accum_steps).backward()
        self.unsynced = skip_sync
        if last:
            self.flush()
        return terms

    def flush(self) -> None:
        """Apply the accumulated gradient (if any) and start the next step.

        At the end of an epoch whose micro-batches do not fill the last step, the gradient accumulated under
        ``no_sync`` was never averaged across ranks: it is all-reduced here (mean over ranks, as DDP would have),
        so every rank takes the same step and the copies stay identical."""
        if self.pending:
            if self.unsynced:
                average_gradients(self.optimizer, self.world_size)
                self.unsynced = False
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.pending = 0


def average_gradients(optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """g ← (Σ_ranks g) / world_size for every parameter's gradient (one all-reduce per tensor)."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad.div_(world_size)


def _head(step: Step) -> str:
    """The head whose selection metric picks the epoch: the model's one head, or the teachers' mean in co-finetuning."""
    return "" if step.heads == [""] else MEAN_HEAD


def _evaluate(step: Step, session: StageSession, spec: LoopSpec, device: torch.device, split: Split,
              predictions: Path | None = None) -> dict[str, Any]:
    """Every metric of every head on ``split`` (``metric_names``), and the teachers' mean in co-finetuning."""
    writer = None
    if predictions is not None and spec.submission:  # every test evaluation: its per-example predictions too
        writer = _PredictionWriter(predictions / PREDICTIONS_DIR, session.rank, step.heads, spec.submission[1])
    batches = _batches(session, split.value, step, spec, device, epoch=None)
    with autocast(device, spec.precision):
        cms = confusion_matrices(step.predict, batches, spec.num_labels, heads=len(step.heads), device=device,
                                 on_predictions=writer)
    if writer is not None:
        writer.close()
    out: dict[str, Any] = {}
    for cm, head in zip(cms, step.heads):
        out.update(metrics_from_confusion(cm, prefix=metric_key(split, "", head)))
    if step.heads != [""]:  # co-finetuning: the teachers' mean of every metric
        names = [n for n in METRICS if metric_key(split, n, step.heads[0]) in out]
        for name in names:
            out[metric_key(split, name, MEAN_HEAD)] = sum(out[metric_key(split, name, h)] for h in step.heads) / len(step.heads)
    return out


class _PredictionWriter:
    """``example_id \\t label`` lines of one rank's share of the test split, one file per evaluated model
    (``<head>part-<rank>.tsv``; merged by the driver with ``merge_predictions``)."""

    def __init__(self, folder: Path, rank: int, heads: list[str], label_text: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.handles = [open(folder / f"{head}part-{rank:05d}.tsv", "w", newline="") for head in heads]
        self.writers = [csv.writer(h, delimiter="\t") for h in self.handles]
        self.label_text = label_text

    def __call__(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        ids, gold = batch["example_id"].tolist(), batch["label"].tolist()
        for writer, head_logits in zip(self.writers, logits):
            writer.writerows([i, self.label_text[label], y] for i, label, y in zip(ids, head_logits.argmax(-1).tolist(), gold))

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


def _batches(session: StageSession, split: str, step: Step, spec: LoopSpec, device: torch.device, epoch: int | None):
    return session.batches(split, spec.micro_batch, step.collate(split), device,
                           None if epoch is None else (spec.seed, epoch))


class _Prefetch:
    """An iterator whose first element is fetched in a background thread from construction on."""

    def __init__(self, iterable) -> None:
        self._it = iter(iterable)
        self._first: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first.append(next(self._it))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = exc

    def __iter__(self):
        self._thread.join()
        if isinstance(self._error, StopIteration):
            return
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._it


def merge_predictions(checkpoint: Path, out: Path, head: str = "", label_text: list[str] | None = None) -> int:
    """Merge the ranks' prediction parts of a checkpoint (of one evaluated model, ``head``) into one file sorted by
    index: ``index \\t prediction`` (the GLUE benchmark's submission format) for an unlabelled split, with a third
    column ``label`` (the gold label, written as ``label_text``) for a labelled one."""
    rows: list[list[str | int]] = []
    for part in sorted((checkpoint / PREDICTIONS_DIR).glob(f"{head}part-*.tsv")):
        with open(part, newline="") as handle:
            rows += [[int(r[0]), *r[1:]] for r in csv.reader(handle, delimiter="\t")]
    rows.sort(key=lambda r: r[0])
    labelled = label_text is not None and bool(rows) and all(len(r) == 3 and int(r[2]) >= 0 for r in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "prediction", "label"] if labelled else ["index", "prediction"])
        writer.writerows([r[0], r[1], label_text[int(r[2])]] if labelled else r[:2] for r in rows)
    return len(rows)
