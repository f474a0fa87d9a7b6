"""The CTR network's building blocks against plain PyTorch references."""

from __future__ import annotations

import math

import torch
from torch import nn

from visctr.ctr.model import BlockLinear


def test_block_linear_is_one_linear_over_the_concatenation():
    torch.manual_seed(0)
    blk = BlockLinear(5, 7, 4)
    ref = nn.Linear(12, 4)
    with torch.no_grad():
        ref.weight.copy_(torch.cat([blk.a.weight, blk.b.weight], dim=1))
        ref.bias.copy_(blk.b.bias)
    a = torch.randn(9, 5, requires_grad=True)
    b = torch.randn(9, 7, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out, out_ref = blk(a, b), ref(torch.cat([a2, b2], dim=1))
    torch.testing.assert_close(out, out_ref)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    torch.testing.assert_close(
        torch.cat([blk.a.weight.grad, blk.b.weight.grad], 1), ref.weight.grad
    )
    torch.testing.assert_close(blk.b.bias.grad, ref.bias.grad)


def test_block_linear_init_uses_the_full_fan_in():
    torch.manual_seed(0)
    blk = BlockLinear(16, 240, 256)
    bound = 1 / math.sqrt(256)
    for t in (blk.a.weight, blk.b.weight, blk.b.bias):
        assert t.abs().max() <= bound
        assert t.abs().max() > 0.9 * bound  # uniform over the whole range, not a smaller one


def test_block_linear_skips_the_input_gradient_of_a_frozen_block():
    blk = BlockLinear(3, 4, 2)
    a = torch.randn(6, 3, requires_grad=True)
    b = torch.randn(6, 4)  # e.g. rows of a frozen visual table
    blk(a, b).sum().backward()
    assert a.grad is not None and b.grad is None
    assert blk.b.weight.grad is not None  # its weight still learns
