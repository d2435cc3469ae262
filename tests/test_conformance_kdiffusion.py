"""k-diffusion-style CFG wrappers audited through their own call (x0 in the VE scale)."""

from __future__ import annotations

import pytest
import torch

from verify.conformance import audit_rule
from verify.conformance.kdiffusion import KDiffusionWrapper

#: two scales off every endpoint (3.3 is the audit's probe strength): enough to tell a swap from CFG
FAST = (0.3, 3.3)


class _CFGDenoiser(torch.nn.Module):
    """What k-diffusion's ``CFGDenoiser`` does: one batched call of the inner model on [x, x] with [uncond, cond],
    split in two, ``uncond + (cond - uncond) * cond_scale``. ``swap`` concatenates the conditions the other way round
    (the mutant)."""

    def __init__(self, inner_model: torch.nn.Module, swap: bool = False):
        super().__init__()
        self.inner_model, self.swap = inner_model, swap

    def forward(self, x, sigma, uncond, cond, cond_scale):
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        cond_in = torch.cat([cond, uncond] if self.swap else [uncond, cond])
        uncond_out, cond_out = self.inner_model(x_in, sigma_in, cond=cond_in).chunk(2)
        return uncond_out + (cond_out - uncond_out) * cond_scale


def cfg_denoiser_reference(inner_model: torch.nn.Module) -> torch.nn.Module:
    return _CFGDenoiser(inner_model)


@pytest.mark.parametrize("space", ["x0", "eps"])
def test_reference_wrapper_passes(space):
    result = audit_rule(KDiffusionWrapper(cfg_denoiser_reference), "cfg", params={"space": space}, strengths=FAST)
    assert result.passed, result.report()


def test_swapped_conditions_are_diagnosed():
    result = audit_rule(KDiffusionWrapper(lambda inner: _CFGDenoiser(inner, swap=True)), "cfg",
                        params={"space": "x0"}, strengths=FAST)
    assert not result.passed
    assert "uncond and cond branches swapped" in result.diagnosis.summary


def test_a_wrapper_that_changes_the_points_is_caught():
    class Rescaling(_CFGDenoiser):
        def forward(self, x, sigma, uncond, cond, cond_scale):
            return super().forward(x * 1.5, sigma, uncond, cond, cond_scale)

    result = audit_rule(KDiffusionWrapper(lambda inner: Rescaling(inner)), "cfg", params={"space": "x0"},
                        strengths=(3.3,), diagnose=False)
    raised = [c for c in result.failures if c.name == "never raises"]
    assert raised and "x: row" in raised[0].detail


def test_refusals():
    with pytest.raises(TypeError, match="^factory:"):
        KDiffusionWrapper(3)
    result = audit_rule(KDiffusionWrapper(cfg_denoiser_reference), "autoguidance", strengths=(3.3,), diagnose=False)
    assert any("rule: a k-diffusion CFG wrapper combines uncond and cond" in c.detail for c in result.failures)
