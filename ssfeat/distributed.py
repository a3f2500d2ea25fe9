"""torch.distributed helpers: every function is a single-process no-op when no group exists."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device | str | None = None) -> torch.device:
    """Initialise the process group if ``torchrun`` set ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo
    otherwise) and return this process's device: ``device`` (a CUDA device without an index: the
    local rank's GPU) or, when ``None``, the local rank's GPU if CUDA is available, else the CPU."""
    dev = None if device is None else torch.device(device)
    cuda = torch.cuda.is_available() if dev is None else dev.type == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_dist():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0")) if dev is None or dev.index is None else dev.index
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return dev if dev is not None else torch.device("cpu")


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (a copy; ``x`` is unchanged)."""
    if not is_dist():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every process."""
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.broadcast(t, 0)
    return int(t.item())


def any_true(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any of them."""
    if not is_dist():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def on_main(fn) -> None:
    """Call ``fn()`` on rank 0 only (e.g. taking the lock of a shared output); if it raised, every
    process raises the same error (so no process runs on alone). Single process: ``fn()``."""
    if not is_dist():
        fn()
        return
    err = [None]
    if is_main():
        try:
            fn()
        except Exception as e:  # sent to every process, raised everywhere below
            err = [e]
    dist.broadcast_object_list(err, 0)
    if err[0] is not None:
        raise err[0]


class _AllGatherRows(torch.autograd.Function):
    """``(m, ...)`` -> ``(W, m, ...)``: every process's tensor; the backward sums the gradients of
    all processes (all-reduce) and returns this process's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[rank()]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's rows of ``x`` ``(n_r, ...)`` (``n_r`` may differ) in rank order.

    Differentiable: gradients with respect to other processes' rows flow back to the process that
    owns them, so a loss over the gathered rows, averaged by DDP, has the gradient of the same loss
    computed in one process on the whole batch. Returns the ``(sum n_r, ...)`` tensor and the
    offset of this process's rows. Single process: ``(x, 0)``.
    """
    if not is_dist():
        return x, 0
    W = world_size()
    n = torch.tensor([len(x)], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(W)]
    dist.all_gather(sizes, n)
    sizes = [int(v.item()) for v in sizes]
    m = max(sizes)
    pad = torch.cat([x, x.new_zeros((m - len(x),) + tuple(x.shape[1:]))]) if len(x) < m else x
    parts = _AllGatherRows.apply(pad)
    return torch.cat([p[:k] for p, k in zip(parts, sizes)]), sum(sizes[: rank()])
