"""Dropout: the rate, the scaling, evaluation mode and the fused residual form."""

import pytest
import torch

from attnkit.models.dropout import Dropout


def test_drops_at_the_rate_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = Dropout(0.3).train()(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.003)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-4)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # expectation preserved


def test_evaluation_mode_and_zero_rate_are_the_identity():
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(0.3).eval().residual(x, 2 * x), 3 * x)


def test_residual_equals_adding_the_dropped_output():
    x, out = torch.randn(64, 32), torch.randn(64, 32, requires_grad=True)
    dropout = Dropout(0.1).train()
    torch.manual_seed(5)
    fused = dropout.residual(x, out)
    (grad_fused,) = torch.autograd.grad(fused.sum(), out)
    torch.manual_seed(5)
    plain = x + dropout(out)
    (grad_plain,) = torch.autograd.grad(plain.sum(), out)
    assert torch.allclose(fused, plain)
    assert torch.allclose(grad_fused, grad_plain)
    assert ((grad_fused == 0) == (fused == x)).all()  # dropped elements get no gradient


def test_rejects_a_rate_outside_zero_to_one():
    with pytest.raises(ValueError, match="dropout must be in"):
        Dropout(1.0)
