"""The training loop: one function, :func:`fit`, trains any task of
:data:`ssfeat.training.tasks.TASKS`, single-process or under ``torchrun`` (DDP; gloo on CPU, NCCL
on GPU) through the same code. Every sample is a pure function of its global index, so a run
resumed from its checkpoint reproduces the uninterrupted run exactly.

Why patch-pose training converges here (the paper's recipe with T=20 and SGD sat at the uniform
histogram): the model's logits are centred and rescaled to a fixed norm
(``PatchPoseConfig.logit_norm``), so the histograms can neither collapse to uniform (where the
alignment gradient vanishes) nor blow up; AdamW with warm-up and cosine decay replaces SGD at lr 3.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as du
from ..files import OutputLock, remove_stale_temps, write_text_atomic
from ..inference.pose import check_device
from ..models.registry import MODEL_KINDS
from ..models.weights import check_state_shapes
from ..version import __version__
from .checkpoint import CHECKPOINT_VERSION, config_from_checkpoint, load_checkpoint, save_atomic
from .configs import LoopConfig
from .tasks import TrainingTask, task_for, task_name

logger = logging.getLogger(__name__)


def lr_at(step: int, total: int, cfg: LoopConfig) -> float:
    """Linear warm-up then cosine decay to 2% of ``cfg.lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def ema_decay_at(step: int, decay: float) -> float:
    """Decay of the weight average after optimisation step ``step`` (0-based): ``decay``, ramped
    up as ``(1 + step) / (10 + step)`` early on so the average forgets the random initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over every floating-point parameter and buffer
    (batch-norm statistics included); integer buffers are copied."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (to_device(v, device) if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


class _StepBatches(torch.utils.data.Dataset):
    """Item ``s`` = this process's training batch of step ``s`` (deterministic)."""

    def __init__(self, task, synth, cfg: LoopConfig, start: int, total: int, rank: int, world: int):
        self.task, self.synth, self.start, self.total = task, synth, start, total
        self.B, self.b, self.rank = cfg.batch_size, cfg.batch_size // world, rank

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int) -> dict:
        base = (self.start + i) * self.B + self.rank * self.b
        return self.task.make_batch(self.synth, range(base, base + self.b))


@dataclass
class _Run:
    """The state :func:`fit` carries from step to step (and stores in every checkpoint)."""

    cfg: LoopConfig
    task: TrainingTask
    model: torch.nn.Module
    ema: torch.nn.Module | None  # the weight average (if any): what validation scores and export reads
    opt: torch.optim.Optimizer
    step: int = 0
    total: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)

    def save(self, path: Path) -> None:
        if du.is_main():
            save_atomic(
                {
                    "checkpoint_version": CHECKPOINT_VERSION,
                    "task": self.task.name,
                    "ssfeat_version": __version__,
                    "config": dataclasses.asdict(self.cfg),
                    "model": self.model.state_dict(),
                    **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                    "optimizer": self.opt.state_dict(),
                    "step": self.step,
                    "total_steps": self.total,
                    "best_score": self.best,
                    "history": self.history,
                },
                path,
            )


def _stored_run(cfg: LoopConfig, last: Path, resume: bool, total_steps: int | None) -> tuple[LoopConfig, dict | None]:
    """The config to train with and, when resuming an existing run, its last checkpoint."""
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        stored = config_from_checkpoint(ckpt)
        if type(stored) is not type(cfg):
            raise ValueError(
                f"{last} is a {ckpt.get('task', 'pose')} run, not a {task_name(cfg)} run: "
                "resume it with its own train command"
            )
        if total_steps is not None and total_steps < ckpt["step"]:
            raise ValueError(f"{last} is already at step {ckpt['step']}; the resumed run cannot be shorter")
        return stored, ckpt
    if resume:
        logger.warning("no checkpoint at %s: starting a new run", last)
    return cfg, None


def _start(cfg: LoopConfig, out_dir: Path, ckpt: dict | None, total_steps: int | None, device, lock) -> _Run:
    """Model, optimiser and weight average of a new run, or of a resumed one at its stored step
    (taking the run folder's ``lock`` on rank 0 before anything is written)."""
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.batch_size % du.world_size():
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {du.world_size()} processes")
    task = task_for(cfg)  # loads a --distill teacher: a bad one fails before anything is written
    if ckpt is not None:  # the stored config must fit the stored weights before a network is built
        check_state_shapes(MODEL_KINDS[task.name], cfg.model, ckpt["model"], out_dir / "last.pt")
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    if cfg.init_weights and ckpt is None:
        model.load_state_dict(task.init_state(cfg.init_weights))
    last = out_dir / "last.pt"
    du.on_main(lock.acquire)  # one lock for all processes of a torchrun
    if du.is_main():
        remove_stale_temps(out_dir)  # checkpoints a killed run was writing
        if ckpt is None and (last.exists() or (out_dir / "log.jsonl").exists()):
            logger.warning("%s holds an earlier run: starting a new one replaces its checkpoints and log", out_dir)
            (out_dir / "log.jsonl").unlink(missing_ok=True)
        if ckpt is not None:
            cut_log(out_dir / "log.jsonl", ckpt["step"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    run = _Run(cfg, task, model, ema, opt, total=cfg.steps)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        run.step, run.best, run.history = ckpt["step"], ckpt["best_score"], ckpt["history"]
        run.total = total_steps or ckpt["total_steps"]
        logger.info("resumed %s at step %d / %d", last, run.step, run.total)
    return run


def cut_log(log: Path, step: int) -> None:
    """Keep the rows of ``log`` (``log.jsonl``) up to ``step``, the step a run resumes from: the
    rows a killed run wrote after its last checkpoint are written again by the resumed run (a row
    cut short by the kill is dropped too)."""
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    write_text_atomic(log, "".join(keep))


class _TimeBudget:
    """Fits the schedule to a time budget: at step 40 from the steps since step 10 (past the
    loader's warm-up), then once more at a quarter of the run (at least step 80) from the steps
    since step 40 (the first fit alone once used 24 of 50 minutes); a run resumed before the refit
    keeps the step-40 schedule. ``seconds`` is None without a budget (or for a resumed run)."""

    def __init__(self, cfg: LoopConfig, resumed: bool) -> None:
        self.minutes = cfg.time_budget_min
        self.seconds = cfg.time_budget_min * 60 if cfg.time_budget_min and not resumed else None
        self.t0, self.calibrated, self.refit_at = time.time(), resumed or self.seconds is None, -1
        self.t_fit, self.s_fit = self.t0, 0

    def after_step(self, step: int, total: int, bar) -> int:
        """The (possibly refitted) total number of steps after optimisation step ``step``."""
        if self.calibrated:
            return total
        if step == 10:
            self.t_fit, self.s_fit = time.time(), step
        if step in (40, self.refit_at):
            now = time.time()
            per_step = (now - self.t_fit) / (step - self.s_fit)
            total = max(step + 1, int((self.seconds - (now - self.t0)) * 0.95 / per_step) + step)
            total = du.broadcast_int(total)  # every process follows rank 0's schedule
            self.refit_at, self.t_fit, self.s_fit = max(2 * step, total // 4), now, step
            self.calibrated = step != 40 or self.refit_at >= total  # no refit for runs shorter than 80 steps
            if bar is not None:
                bar.total = total
            logger.info("time budget %.1f min: %d steps at %.3f s/step", self.minutes, total, per_step)
        return total

    def exceeded(self, step: int, total: int) -> bool:
        return self.seconds is not None and du.any_true(time.time() - self.t0 > self.seconds * 1.05 and step < total)


def _train_step(run: _Run, net, batch: dict) -> tuple[float, float]:
    """One optimisation step (learning rate, loss, checks, weight average); returns ``(lr, loss)``."""
    lr = lr_at(run.step, run.total, run.cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    loss, parts = run.task.loss(net, batch, run.step)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {run.step}: {parts}")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    norms = [torch.linalg.vector_norm(g) for g in grads]  # torch.nn.utils.get_total_norm, which needs torch 2.6
    if grads and not torch.isfinite(torch.linalg.vector_norm(torch.stack(norms))):
        raise FloatingPointError(f"non-finite gradient at step {run.step} (loss {parts}); weights left unchanged")
    run.opt.step()
    if run.ema is not None:
        ema_update(run.ema, run.model, ema_decay_at(run.step, run.cfg.ema_decay))
    run.step += 1
    return lr, du.all_reduce_mean(loss.detach()).item()


def _validate(run: _Run, val_batches: dict, out_dir: Path, lr: float, loss: float) -> dict[str, float]:
    """Score the model (its weight average, if kept), log the scores and keep ``best.pt``."""
    metrics = run.task.evaluate(run.ema if run.ema is not None else run.model, val_batches)
    score = run.task.score(metrics)
    run.history.append({"step": run.step, "loss": loss, "lr": lr, **metrics})
    if du.is_main():
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(run.history[-1]) + "\n")
    if score > run.best:
        run.best = score
        run.save(out_dir / "best.pt")
    return metrics


def progress_postfix(loss: float, metrics: dict[str, float], names: dict[str, str]) -> dict[str, str]:
    """The progress bar's fields: the training loss and, per short name of ``names`` (short name ->
    validation metric), the last validation's value, ``-`` until there is one (or when it is not finite)."""
    post = {"loss": f"{loss:.3f}"}
    for short, metric in names.items():
        v = metrics.get(metric)
        post[short] = f"{v:.1f}" if v is not None and math.isfinite(v) else "-"
    return post


def fit(
    cfg: LoopConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    total_steps: int | None = None,
    device: str | None = None,
) -> Path:
    """Train (or resume) the model of ``cfg``'s task (:data:`ssfeat.training.tasks.TASKS`: a
    :class:`PoseTrainConfig` trains a PatchPoseNet, and so on); returns the path of the final
    checkpoint ``last.pt``.

    With ``resume``, the run continues from ``out_dir/last.pt`` with the configuration and schedule
    stored there (``cfg`` is ignored); ``total_steps`` changes the run's length. Under ``torchrun``
    each of the ``W`` processes draws ``batch_size / W`` pairs per step.

    ``device``: where to train (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``; under
    ``torchrun`` ``"cuda"`` is each process's local GPU); ``None``: the local GPU if CUDA is available,
    else the CPU. Not part of the run's configuration: a run may resume on another device.

    Raises:
        OutputLockedError: another process is writing ``out_dir`` (``out_dir/.ssfeat.lock``).
    """
    device = None if device is None else check_device(device)
    lock = OutputLock(out_dir, folder=True)
    try:
        return _fit(cfg, Path(out_dir), resume, progress, total_steps, lock, device)
    finally:
        lock.release()


def _fit(cfg: LoopConfig, out_dir: Path, resume: bool, progress: bool, total_steps: int | None, lock, device) -> Path:
    device = du.init_from_env(device)
    world, rank = du.world_size(), du.rank()
    last = out_dir / "last.pt"
    cfg, ckpt = _stored_run(cfg, last, resume, total_steps)
    run = _start(cfg, out_dir, ckpt, total_steps, device, lock)
    train_synth, val_synth = run.task.synthesizers()
    val_batches = to_device(run.task.val_batch(val_synth), device)
    net = DistributedDataParallel(run.model) if world > 1 else run.model
    # the time budget applies to a fresh run; a resumed run keeps the schedule fitted then
    budget = _TimeBudget(cfg, resumed=ckpt is not None)
    bar = None
    if progress and du.is_main():
        from tqdm import tqdm

        bar = tqdm(total=run.total, initial=run.step, desc=f"train {run.task.name}", dynamic_ncols=True)
    net.train()
    metrics: dict[str, float] = {}
    horizon = run.total if budget.calibrated else 10**7  # upper bound for the loader until the budget fits it
    batches = _StepBatches(run.task, train_synth, cfg, run.step, horizon, rank, world)
    loader = iter(
        torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            num_workers=cfg.workers,
            prefetch_factor=4 if cfg.workers else None,
            persistent_workers=False,
        )
    )
    while run.step < run.total:
        lr, loss = _train_step(run, net, to_device(next(loader), device))
        run.total = budget.after_step(run.step, run.total, bar)
        if run.step % cfg.val_every == 0 or run.step == run.total:
            metrics = _validate(run, val_batches, out_dir, lr, loss)
        if run.step % cfg.ckpt_every == 0 or run.step == run.total:
            run.save(last)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(progress_postfix(loss, metrics, run.task.postfix))
        if budget.exceeded(run.step, run.total):
            logger.warning(
                "time budget exceeded at step %d / %d: checkpoint saved, resume with --resume", run.step, run.total
            )
            run.save(last)
            break
    if bar is not None:
        bar.close()
    du.barrier()
    du.cleanup()
    return last


__all__ = ["cut_log", "ema_decay_at", "ema_update", "fit", "lr_at", "progress_postfix", "to_device"]
