"""The sampled-law claims (S0-PROP2-SAMPLES, S0-TEMPERATURE, S0-WINF, S0-QUALITY-DIVERSITY, S0-THRESHOLDING,
S1-SCALE-TABLE, L-DDIM-DDPM, L-OVERSHOOT, L-INTERVAL): their records follow from their providers' evidence, and the
evidence agrees with the references it is built from."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import WrappedDenoiser
from verify import rules
from verify.claims.sampling import differs
from verify.evidence.interval import INTERVAL_SIGMA_T, interval_noise_to_signal
from verify.evidence.laws import Moments
from verify.evidence.shared import first_sampler_by_limit
from verify.evidence.thresholding import x0_out_of_range_fractions
from verify.exact_law import exact_gaussian_cfg_law
from verify.samplers import SAMPLERS, get_sampler, sample, time_grid

IDS = ("S0-PROP2-SAMPLES", "S0-TEMPERATURE", "S0-WINF", "S0-QUALITY-DIVERSITY", "S0-THRESHOLDING", "S1-SCALE-TABLE",
       "L-DDIM-DDPM", "L-OVERSHOOT", "L-INTERVAL")


@pytest.fixture(scope="module")
def records(ledger):
    return ledger(*IDS)


def test_laws_have_the_specified_structure(records):
    laws = records["S0-PROP2-SAMPLES"].evidence["laws"]
    for world in ("gauss1d", "bimodal1d"):
        for kind in ("ode", "sde", "tilted"):
            for w in ("0", "1", "3", "7"):
                entry = laws[world][kind][w]
                assert {"mean", "var", "mass_below_0"} <= set(entry), (world, kind, w)
                assert all(math.isfinite(entry[k]) for k in ("mean", "var", "mass_below_0"))


def test_gauss1d_laws_are_the_moment_ode_solutions(records):
    laws = records["S0-PROP2-SAMPLES"].evidence["laws"]["gauss1d"]
    world = get_world("gauss1d")
    for kind in ("ode", "sde"):
        mean, cov = exact_gaussian_cfg_law(world.law(1), world.law(None), 3.0, kind, start="marginal")
        # the same deterministic solve: equal to rounding (1e-12 leaves room for a different BLAS path)
        assert laws[kind]["3"]["mean"] == pytest.approx(float(mean), abs=1e-12)
        assert laws[kind]["3"]["var"] == pytest.approx(float(cov[0, 0]), abs=1e-12)
    # the tilted target in closed form: N(2(1+w)/(2+w), 1/(2+w))
    assert laws["tilted"]["3"]["mean"] == pytest.approx(8 / 5, rel=1e-12)
    assert laws["tilted"]["3"]["var"] == pytest.approx(1 / 5, rel=1e-12)


def test_at_w_zero_every_law_is_the_conditional(records):
    laws = records["S0-PROP2-SAMPLES"].evidence["laws"]
    for world, (mean, var) in (("gauss1d", (1.0, 0.5)), ("bimodal1d", (2.0, 0.5))):
        for kind in ("ode", "sde", "tilted"):
            entry = laws[world][kind]["0"]
            err = entry.get("error", {})
            # deterministic references: within 10x their own halving error estimate (1e-6 floor)
            assert abs(entry["mean"] - mean) <= 10 * max(err.get("mean", 0), 1e-6), (world, kind)
            assert abs(entry["var"] - var) <= 10 * max(err.get("var", 0), 1e-6), (world, kind)


def test_the_bimodal1d_references_are_resolved(records):
    """The flow map's and the Fokker-Planck solve's own error estimates are far below the separations the records
    draw (>= 0.1 between ODE, SDE and target at w > 0): below 1e-3 for both."""
    laws = records["S0-PROP2-SAMPLES"].evidence["laws"]["bimodal1d"]
    for kind in ("ode", "sde"):
        for w, entry in laws[kind].items():
            assert max(entry["error"].values()) < 1e-3, (kind, w)


def test_differs_uses_the_larger_error_estimate():
    a = Moments(1.0, 0.5, 0.1, {"mean": 1e-3}, "")
    assert not differs(a, Moments(1.0 + 9e-3, 0.5, 0.1))  # within 10 x 1e-3
    assert differs(a, Moments(1.0 + 11e-3, 0.5, 0.1))
    assert differs(Moments(1.0, 0.5, 0.1), Moments(1.0 + 2e-5, 0.5, 0.1))  # the 1e-6 floor


def test_sampling_verdicts_follow_from_the_evidence(records):
    prop2 = records["S0-PROP2-SAMPLES"]
    assert prop2.verdict == "fails" and prop2.evidence["w_zero_is_the_conditional"] is True
    assert all(v for w in prop2.evidence["differs_from_tilted"].values() for row in w.values() for v in row.values())
    ddim_ddpm = records["L-DDIM-DDPM"]
    assert ddim_ddpm.verdict == "holds"
    assert all(v for world in ddim_ddpm.evidence["ode_differs_from_sde"].values() for v in world.values())
    overshoot = records["L-OVERSHOOT"].evidence["bimodal1d_means_by_w"]
    assert records["L-OVERSHOOT"].verdict == "holds" and overshoot["7"]["ode"] > overshoot["3"]["ode"] > 2.0
    qd = records["S0-QUALITY-DIVERSITY"]
    assert qd.verdict == "conditional" and qd.evidence["recall_decreases"] is True
    confidence = list(qd.evidence["ring2d_classifier_confidence_by_w"].values())
    assert confidence[-1] > confidence[0]
    thr = records["S0-THRESHOLDING"]
    assert thr.verdict == "conditional"
    by_w = thr.evidence["x0_out_of_range_by_w"]
    assert by_w["0"]["mean_fraction_of_x0_predictions_out_of_range"] < 0.01
    assert by_w["15"]["mean_fraction_of_x0_predictions_out_of_range"] > 0.5
    assert records["S1-SCALE-TABLE"].verdict == "conditional"
    interval = records["L-INTERVAL"]
    rows = interval.evidence["ring2d_class0_ddim_100_steps"]
    assert interval.verdict == "holds"
    assert rows["interval"]["frechet_to_p(x|c)"] < rows["full"]["frechet_to_p(x|c)"]


def test_monte_carlo_reaches_the_references(records):
    """Every sampler's Monte Carlo mean on bimodal1d (w = 3, 100 steps) sits near its continuous reference: the
    z-score mixes discretisation bias and sampling error, so it is bounded loosely here (|z| < 12 at 4000 samples);
    the per-sampler convergence to the reference is tests/test_samplers.py's business."""
    mc = records["L-DDIM-DDPM"].evidence["bimodal1d_monte_carlo_w3_100_steps"]
    assert set(mc) == set(SAMPLERS)
    for name, row in mc.items():
        assert row["reference"] == get_sampler(name).continuous_limit(0.0)
        assert abs(row["z_mean_vs_reference"]) < 12, name
        assert abs(row["z_mean_vs_tilted"]) > abs(row["z_mean_vs_reference"]), name


def test_scale_1_variance_error_is_read_from_the_discrete_laws(records):
    rec = records["S1-SCALE-TABLE"]
    errors = rec.evidence["gauss1d_scale_1_relative_variance_error"]
    worst_25 = max(abs(v) for v in errors["25"].values())
    assert f"by up to {100 * worst_25:.0f} %" in rec.conditions
    # more steps, closer to p(x|c): every sampler converges to the continuous limit, which is p(x|c) at w = 0
    assert max(abs(v) for v in errors["100"].values()) < worst_25


def test_target_records(records):
    temperature = records["S0-TEMPERATURE"]
    assert temperature.verdict == "fails"
    row = temperature.evidence["gauss1d"]["3"]
    assert math.isclose(row["tilted_mean"], 8 / 5, rel_tol=1e-12) and math.isclose(row["tilted_var"], 1 / 5,
                                                                                  rel_tol=1e-12)
    winf = records["S0-WINF"]
    assert winf.verdict == "fails" and winf.evidence["bimodal1d"]["100"]["var"] > 0.4
    assert winf.evidence["gauss1d"]["100"]["var"] < 0.01  # 1 / (2 + w)


def test_winf_sampled_laws(records):
    """The ODE law narrows and drifts past the mode (mean above 2 and growing with w); the SDE law hardly narrows."""
    sampling = records["S0-WINF"].evidence["sampling"]
    ode_mean = sampling["bimodal1d_ode_mean"]
    ws = sorted(ode_mean, key=float)
    assert all(ode_mean[b] > ode_mean[a] for a, b in zip(ws, ws[1:], strict=False)) and ode_mean["15"] > 4
    assert sampling["bimodal1d_ode_var"]["7"] < 0.5 * sampling["bimodal1d_ode_var"]["0"]
    assert min(sampling["bimodal1d_sde_var"].values()) > 0.4


def test_the_two_samplers_that_represent_each_continuous_limit():
    first = first_sampler_by_limit()
    assert first == {"ode": "ddim", "sde": "ddpm"}  # registration order today
    for limit, name in first.items():
        assert get_sampler(name).continuous_limit(0.0) == limit
        earlier = list(SAMPLERS)[:list(SAMPLERS).index(name)]
        assert all(get_sampler(e).continuous_limit(0.0) != limit for e in earlier)


class _RecordingX0(WrappedDenoiser):
    """The measurement as a denoiser wrapper (how it was first written): it sees x_t and t at every call."""

    def __init__(self, denoiser, limit):
        self.denoiser, self.limit, self.fractions = denoiser, limit, []

    def eps(self, x, t, condition=None):
        eps = self.denoiser.eps(x, t, condition)
        a, s = (float(v) for v in self.schedule.alpha_sigma(t))
        self.fractions.append(float((((x - s * eps) / a).abs() > self.limit).any(dim=1).double().mean()))
        return eps


def test_x0_range_measured_by_the_callback_is_the_measurement_at_the_state_stepped_from():
    """The callback gets the new state; the x0-prediction belongs to the state the step started from. Measured
    both ways on one DDIM run (deterministic, so the two runs are the same path): equal, fraction by fraction."""
    world = get_world("ring2d")
    guided = rules.get("cfg", w=7.0).guide(AnalyticDenoiser(world), {"cond": 0})
    x = world.law(0).noised(*(float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))).sample(
        300, torch.Generator().manual_seed(5))
    times = time_grid(20)
    by_callback = x0_out_of_range_fractions(guided, x, times, 4.0)  # about the ledger's data range
    recorder = _RecordingX0(guided, 4.0)
    sample("ddim", recorder, x, times)
    assert by_callback == recorder.fractions and len(by_callback) == 20
    # not vacuous: the fraction moves from 1 to 0 along the path (measured: 1 for 11 steps, 0.997, 0.62, then 0), so
    # measuring at the new state instead of the one stepped from would shift the sequence and break the equality
    assert by_callback[0] == 1.0 and by_callback[-1] == 0.0 and len(set(by_callback)) >= 3


def test_interval_in_edm_noise_level_selects_the_steps_of_the_sigma_t_interval():
    """L-INTERVAL's interval, first chosen as sigma_t in [0.4, 0.95] on vp-linear, is given to the interval rule as
    sigma/alpha = sigma_t / sqrt(1 - sigma_t^2); on the ledger's 100-step grid both select the same steps."""
    lo, hi = (interval_noise_to_signal(v) for v in INTERVAL_SIGMA_T)
    assert lo == pytest.approx(0.4 / math.sqrt(0.84), rel=1e-15) and hi == pytest.approx(0.95 / math.sqrt(0.0975),
                                                                                         rel=1e-15)
    rule = rules.get("interval", rule=rules.get("cfg", w=3.0), sigma_lo=lo, sigma_hi=hi)
    schedule = get_schedule("vp-linear")
    inside_sigma_t, inside_rule = [], []
    for t in time_grid(100)[:-1].tolist():
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
        inside_sigma_t.append(0.4 <= sigma <= 0.95)
        inside_rule.append(rule.weights_at(t, schedule) != {"cond": 1.0})
    assert inside_sigma_t == inside_rule and sum(inside_rule) == 35
    with pytest.raises(ValueError, match="^sigma_t"):
        interval_noise_to_signal(1.0)
