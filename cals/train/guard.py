"""The non-finite guard every training task's optimizer step goes through.

A step whose loss or gradient holds a NaN or an Inf is skipped: the optimizer does not step (its
moments and the weights stay as they were) and the task reports ``SKIPPED_METRIC = 1`` in its
metrics. The loop (:func:`cals.train.loop.run`) counts these as ``skipped_steps`` and stops the
run after ``TrainConfig.max_nonfinite_steps`` of them in a row (:class:`NonFiniteError`);
:func:`cals.train.checkpoint.save_checkpoint` refuses weights that are not finite.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

#: Metric a task's ``train_step`` returns: 1.0 when the step's update was skipped, else 0.0.
SKIPPED_METRIC = "skipped"


class NonFiniteError(ValueError):
    """Training produced NaN/Inf (too many skipped steps in a row, or non-finite weights at a
    checkpoint). One line; the ``cals-*`` commands print it and exit 2."""


def step_if_finite(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
                   grad_clip: float) -> tuple[bool, float]:
    """After ``loss.backward()``: clip the gradient norm of ``parameters`` to ``grad_clip`` (0:
    no clipping) and step ``optimizer``, unless the loss or the gradient norm is NaN/Inf.

    Under DDP every rank takes the same decision (the flags are all-reduced), so the replicas
    never drift apart. Returns ``(stepped, grad_norm)``; the norm is the L2 norm of all
    gradients before clipping (NaN/Inf for a skipped step).
    """
    parameters = [p for p in parameters if p.grad is not None]
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters]) if parameters else torch.zeros(())
    finite = torch.isfinite(loss.detach()).all() & torch.isfinite(norm.to(loss.device))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = finite.to(torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = flag.bool()
    stepped = bool(finite)
    if stepped:
        optimizer.step()
    return stepped, float(norm)


def snapshot_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of ``module``'s buffers (BatchNorm running statistics), taken before a forward
    pass whose step may be skipped: the train-mode forward updates them even then."""
    return [buffer.detach().clone() for buffer in module.buffers()]


@torch.no_grad()
def restore_buffers(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> None:
    """Put back the buffers of :func:`snapshot_buffers` (after a skipped step)."""
    for buffer, saved in zip(module.buffers(), snapshot):
        buffer.copy_(saved)


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors holding NaN/Inf anywhere in ``tree``
    (a tensor, or dicts / lists / tuples of them, e.g. a state dict or an optimizer state)."""
    if isinstance(tree, torch.Tensor):
        return [prefix or "tensor"] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    if isinstance(tree, Mapping):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]
