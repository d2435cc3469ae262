"""The samplers of the tilted target in the registry (verify.samplers.TILTED_SAMPLERS): one signature with the process
samplers, the same guided denoiser, a trained network accepted by every sampler that needs no exact law, and the
Metropolis-adjusted corrector leaving the product law invariant where the unadjusted one is biased."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.neural import load_checkpoint
from verify import rules
from verify.samplers import SAMPLERS, TILTED_SAMPLERS, ddpm, get_sampler, sample, time_grid
from verify.tilted import tilted_law
from verify.tilted_exact import tilted_denoiser
from verify.tilted_langevin import pc_run

F64 = torch.float64
CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "ring2d"


def _guided(w: float = 3.0, world: str = "gauss1d", cond=1):
    return rules.get("cfg", w=w).guide(AnalyticDenoiser(get_world(world), "vp-linear"), cond)


def test_registry_holds_the_four_and_shares_the_namespace() -> None:
    assert sorted(TILTED_SAMPLERS) == ["exact", "fkc", "langevin", "mcmc"]
    assert not set(TILTED_SAMPLERS) & set(SAMPLERS)
    assert [n for n, spec in TILTED_SAMPLERS.items() if spec.analytic_only] == ["exact"]
    assert get_sampler("fkc") is TILTED_SAMPLERS["fkc"]
    with pytest.raises(ValueError, match="^name: unknown sampler 'nope'"):
        get_sampler("nope")


@pytest.mark.parametrize("name", sorted(TILTED_SAMPLERS))
def test_common_signature_on_the_exact_denoiser(name: str) -> None:
    """Each runs through ``sample`` with the process samplers' arguments, returns [N, d] in x's dtype, finite, and is
    reproducible from the generator's seed."""
    guided = _guided()
    ts = time_grid(10, 1.0, 1e-3)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(64, 1, dtype=F64, generator=gen)
        runs.append(sample(name, guided, x, ts, generator=gen))
    assert runs[0].shape == (64, 1) and runs[0].dtype == F64 and bool(torch.isfinite(runs[0]).all())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", sorted(TILTED_SAMPLERS))
def test_refusals_name_the_argument(name: str) -> None:
    x = torch.zeros(8, 1, dtype=F64)
    ts = time_grid(4, 1.0, 1e-3)
    with pytest.raises(ValueError, match="^noise:" if name != "exact" else "^noise"):
        sample(name, _guided(), x, ts, generator=torch.Generator(), noise=torch.ones(3, 8, 1, dtype=F64))
    with pytest.raises((TypeError, ValueError), match="^generator"):
        sample(name, _guided(), x, ts)


def test_rules_without_a_tilted_target_are_refused() -> None:
    den = AnalyticDenoiser(get_world("gauss1d"), "vp-linear")
    x = torch.zeros(8, 1, dtype=F64)
    for name in ("fkc", "exact"):
        with pytest.raises(ValueError, match="^denoiser:"):
            sample(name, rules.get("rescale", w=3.0).guide(den, 1), x, time_grid(4), generator=torch.Generator())
        with pytest.raises(ValueError, match="^denoiser:"):
            sample(name, den, x, time_grid(4), generator=torch.Generator())  # not guided: no branches to read


def test_exact_is_ddpm_on_the_tilted_denoiser() -> None:
    """The registered ``exact`` is DDPM driven by the eps of pi_t, draw for draw."""
    guided = _guided(7.0, "bimodal1d")
    ts = time_grid(8)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, dtype=F64, generator=gen)
    noise = torch.randn(8, 200, 1, dtype=F64, generator=gen)
    assert torch.equal(sample("exact", guided, x, ts, noise=noise), ddpm(tilted_denoiser(guided), x, ts, noise=noise))


@pytest.mark.skipif(not CHECKPOINT.with_suffix(".safetensors").exists(), reason="ring2d checkpoint not shipped")
def test_trained_network_runs_in_every_sampler_but_exact() -> None:
    """A trained network (ring2d's checkpoint, cross-attention with a learned null token) guided by CFG: fkc,
    langevin and mcmc run and stay finite; exact refuses it by name (a network has no exact tilted score)."""
    net = load_checkpoint(CHECKPOINT)
    guided = rules.get("cfg", w=3.0).guide(net, 0)
    ts = time_grid(6, 1.0, 1e-2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 2, generator=gen)
    for name in ("fkc", "langevin", "mcmc"):
        out = sample(name, guided, x, ts, generator=gen)
        assert out.shape == (128, 2) and bool(torch.isfinite(out).all()), name
    with pytest.raises(ValueError, match="^denoiser: the exact sampler needs the exact noised laws"):
        sample("exact", guided, x, ts, generator=gen)


def test_metropolis_corrector_keeps_the_product_law_where_unadjusted_langevin_is_biased() -> None:
    """At one noise level s the guided score on gauss1d is that of the Gaussian product q_s = N(m, 1/A). With a step
    h = 1/A the unadjusted Langevin chain's invariant law has variance 1/(A(1 - hA/2)) = 2/A (twice q_s's), while the
    Metropolis-adjusted chain keeps q_s exactly (the trapezoid log-ratio is exact for an affine score). 300 corrector
    steps from a start far from q_s (the chain contracts by about |1 - hA| per accepted step, so it forgets the start;
    acceptance measured ~0.5), n = 20000 chains: the sample variance's standard error is v sqrt(2/n) = 1% of v, so
    |z| < 4.5 (two-sided false alarm 7e-6 for the pair of checks) accepts the MALA law and the unadjusted law's +100%
    is 100 standard errors away (power ~1 against that alternative)."""
    w, s, n = 3.0, 0.2, 20_000
    guided = _guided(w)
    mean, cov, _ = tilted_law(get_world("gauss1d"), rules.get("cfg", w=w), 1, t=s).gaussian()
    m, v = float(mean[0]), float(cov[0, 0])
    h = v  # h A = 1
    grid = torch.tensor([s + 1e-3, s], dtype=F64)
    out = {}
    for metropolis in (True, False):
        gen = torch.Generator().manual_seed(11)
        x = 3.0 + torch.randn(n, 1, dtype=F64, generator=gen)
        run = pc_run(guided, x, grid, corrector_steps=300, step_size=h, metropolis=metropolis, generator=gen)
        out[metropolis] = run
    z_mean = (float(out[True].x.mean()) - m) / math.sqrt(v / n)
    z_var = (float(out[True].x.var()) - v) / (v * math.sqrt(2.0 / n))
    assert abs(z_mean) < 4.5 and abs(z_var) < 4.5, (z_mean, z_var)
    assert 0.2 < float(out[True].acceptance[0]) < 0.95
    z_biased = (float(out[False].x.var()) - v) / (v * math.sqrt(2.0 / n))
    assert z_biased > 50.0, z_biased


class _BreaksAfter:
    """A base denoiser that returns NaN from its ``calls``-th evaluation on (a model diverging mid-run)."""

    def __init__(self, calls: int):
        self.inner, self.left = AnalyticDenoiser(get_world("gauss1d"), "vp-linear"), calls
        self.schedule, self.dim = self.inner.schedule, 1

    def eps(self, x, t, condition=None):
        self.left -= 1
        out = self.inner.eps(x, t, condition)
        return out if self.left > 0 else torch.full_like(out, math.nan)


@pytest.mark.parametrize("name", ["fkc", "langevin", "mcmc"])
@pytest.mark.parametrize("calls", [3, 9])
def test_a_non_finite_prediction_stops_the_run_naming_the_denoiser(name: str, calls: int) -> None:
    """Every evaluation is checked as it arrives (the predictor's, the corrector's, the start weights'), so the run
    stops at the first NaN with a message that names what broke (``denoiser:`` from the sampler's check, or the
    branch, e.g. ``eps_uncond:``, from the guidance rule's own input check) instead of carrying NaN to the end."""
    guided = rules.get("cfg", w=3.0).guide(_BreaksAfter(calls), 1)
    x = torch.randn(16, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^(denoiser: non-finite prediction|eps_\w+: contains NaN)"):
        sample(name, guided, x, time_grid(10, 1.0, 1e-3), generator=torch.Generator().manual_seed(1))
