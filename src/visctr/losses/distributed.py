"""Gathering embeddings across DDP ranks so contrastive negatives span the global batch."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, gradients flowing back to each rank.

    Identity when torch.distributed is not initialised (or has one rank). Every rank must
    pass the same shape. Use :func:`gather_no_grad` for ids.
    """
    if not is_distributed():
        return x
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_gather_single

    # what torch.distributed.nn.functional.all_gather's deprecation notice points to: the
    # functional collective, whose backward reduce-scatters (sums) the gradients
    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (e.g. integer ids) from every rank along dim 0; no gradient."""
    if not is_distributed():
        return x
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0
