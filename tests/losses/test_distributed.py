"""Contrastive losses over embeddings gathered across 2 CPU (gloo) ranks: the ranks' mean
loss and gradients equal the single-process loss over the global batch."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visctr.losses import click_contrastive_loss, info_nce_loss

B, D, WORLD = 3, 4, 2


def _inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B * WORLD, D, generator=g, dtype=torch.float64)
    it = torch.randn(B * WORLD, D, generator=g, dtype=torch.float64)
    qids = torch.tensor([0, 1, 1, 2, 3, 0])  # query 1 and 0 appear on both ranks
    iids = torch.tensor([5, 6, 7, 5, 8, 9])
    return q, it, qids, iids


def _losses(q, it, qids, iids, gather):
    lc = click_contrastive_loss(q, it, qids, iids, 0.3, gather=gather)
    ln = info_nce_loss(q, it, 0.3, gather=gather)
    return lc, ln


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        q, it, qids, iids = _inputs()
        sl = slice(rank * B, (rank + 1) * B)
        ql, il = q[sl].clone().requires_grad_(), it[sl].clone().requires_grad_()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            lc, ln = _losses(ql, il, qids[sl], iids[sl], True)
            (lc + ln).backward()
        notes = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
        out[rank] = (lc.item(), ln.item(), ql.grad, il.grad, notes)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_gathered_losses_match_global_batch():
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
        res = dict(out)
    q, it, qids, iids = _inputs()
    q.requires_grad_()
    it.requires_grad_()
    lc, ln = _losses(q, it, qids, iids, False)
    (lc + ln).backward()
    assert sum(res[r][0] for r in range(WORLD)) / WORLD == pytest.approx(lc.item(), rel=1e-10)
    assert sum(res[r][1] for r in range(WORLD)) / WORLD == pytest.approx(ln.item(), rel=1e-10)
    # all_gather's backward sums every rank's loss gradient; DDP then averages over ranks
    gq = torch.cat([res[r][2] for r in range(WORLD)]) / WORLD
    gi = torch.cat([res[r][3] for r in range(WORLD)]) / WORLD
    torch.testing.assert_close(gq, q.grad)
    torch.testing.assert_close(gi, it.grad)
    # the gather uses torch's supported functional collective: no deprecation notice
    assert [res[r][4] for r in range(WORLD)] == [[], []]
