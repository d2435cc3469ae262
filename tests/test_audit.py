"""The CFG audit (verify/audit.py): correct combiners pass, every mutant fails, the audit is clean itself.

The combiners live in ``tests/audit_mutants.py``; each mutant is listed with the check names that must catch it.
"""

from __future__ import annotations

import re
import sys
import textwrap
import threading
import time

import audit_mutants as mutants
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from verify.audit import (
    GUIDANCE_SCALES,
    AuditResult,
    AuditTimeout,
    SpecError,
    audit_cfg,
    cfg_tolerance,
    load_combiner,
)
from verify.rules.cfg import cfg

N_VALUE_CHECKS = 4 * 5 * 6 * 2
CONTRACT_NAMES = (
    "returns a torch.Tensor without raising",
    "output shape equals input shape [N, d]",
    "output dtype is float64 for float64 inputs",
    "output is finite",
    "inputs unchanged after the call (eps_uncond, eps_cond, x)",
    "output shares no storage with an input",
    "deterministic: a second call on fresh copies is bitwise equal",
)


def _value_failures(result: AuditResult) -> list[str]:
    return [c.name for c in result.failures if c.name not in CONTRACT_NAMES and "layout" not in c.name]


def _project_cfg(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    return cfg(eps_uncond, eps_cond, guidance_scale=guidance_scale)


# ----------------------------------------------------------------------------------------------------------------
# Correct combiners pass; every mutant fails
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("combine", [*mutants.CORRECT.values(), _project_cfg],
                         ids=[*mutants.CORRECT, "verify.rules.cfg.cfg"])
def test_correct_combiner_passes(combine):
    result = audit_cfg(combine)
    assert result.passed, [c for c in result.failures][:3]
    # the bound is not razor-thin: correct routes stay well inside it
    assert max(result.worst_ratio.values()) < 0.5


@pytest.mark.parametrize("name", list(mutants.MUTANTS))
def test_mutant_fails(name):
    combine, catchers = mutants.MUTANTS[name]
    result = audit_cfg(combine)
    assert not result.passed
    failed = [c.name for c in result.failures]
    for catcher in catchers:
        assert any(catcher in f for f in failed), (catcher, failed[:5])


def test_at_least_twelve_distinct_mutants():
    assert len(mutants.MUTANTS) >= 12
    assert len({f for f, _ in mutants.MUTANTS.values()}) == len(mutants.MUTANTS)


# Why each axis of the grid is there: some bugs show at one value only.
@pytest.mark.parametrize(("name", "pattern"), [
    ("clamps_large_g", r" g=7\.5 "),                  # only the large scale
    ("guidance_scale_float32", r" g=(0\.3|3\.3) "),   # only scales that are not float32 numbers
    ("skips_guidance_below_one", r" g=(0|0\.3) "),    # only below 1
    ("alpha_bar_confusion", r" vp-linear "),          # invisible where alpha = 1
    ("assumes_vp_alpha", r" edm "),                   # only where sigma > 1
    ("squeezes_output", r"^bimodal1d "),              # only d = 1
    ("first_feature_only", r"^(ring2d|attributes2d|tokens16d) "),  # only d > 1
], ids=lambda v: v if not v.startswith(("^", " ")) else None)
def test_some_bugs_hide_everywhere_but_one_axis(name, pattern):
    failed = _value_failures(audit_cfg(mutants.MUTANTS[name][0]))
    assert failed
    assert all(re.search(pattern, f) for f in failed), [f for f in failed if not re.search(pattern, f)][:3]


def test_value_only_bugs_are_caught_by_contract_checks():
    """In-place, aliasing and non-determinism leave every value right: only the contract checks see them."""
    for name, contract in (("inplace_write", CONTRACT_NAMES[4]), ("returns_input_at_g1", CONTRACT_NAMES[5]),
                           ("alternates_formula", CONTRACT_NAMES[6])):
        result = audit_cfg(mutants.MUTANTS[name][0])
        assert not _value_failures(result), name
        assert contract in [c.name for c in result.failures], name


def test_float32_fails_every_value_check_by_a_wide_margin():
    """The tolerance is tight enough that float32 arithmetic fails at every audited (world, t, g, region)."""
    result = audit_cfg(mutants.silent_float32)
    failed = set(_value_failures(result))
    value_names = [n for n in result.worst_ratio if "layout" not in n]
    assert len(value_names) == N_VALUE_CHECKS
    assert failed == set(value_names)
    assert min(result.worst_ratio[n] for n in value_names) > 1e3


def test_an_error_between_one_and_ten_tolerances_fails():
    """The near-miss mutant errs by 3 tolerances at g = 7.5 and nowhere else: exactly those 40 value checks fail,
    each by err/tol inside (2.9, 3.1) (3 tol plus the correct formula's rounding, at most 0.09 tol); every other check
    stays below 0.09. So the audit's comparison is tight to within a factor of 3: loosening it tenfold (or by
    anything above 3.1) lets this mutant pass and fails this test."""
    result = audit_cfg(mutants.near_miss_3x_tolerance)
    failed = set(_value_failures(result))
    assert failed == {n for n in result.worst_ratio if " g=7.5 " in n and "layout" not in n}
    assert len(failed) == 40 and len(result.failures) == 40  # no contract check sees it
    factor = mutants.NEAR_MISS_FACTOR
    assert all(factor - 0.1 < result.worst_ratio[n] < factor + 0.1 for n in failed)
    assert max(r for n, r in result.worst_ratio.items() if n not in failed) < 0.09


# ----------------------------------------------------------------------------------------------------------------
# The audit itself
# ----------------------------------------------------------------------------------------------------------------
def test_result_structure():
    result = audit_cfg(mutants.lerp_eps)
    assert result.passed is True and result.failures == []
    assert len(result.checks) == len(CONTRACT_NAMES) + N_VALUE_CHECKS + 4
    names = [c[0] for c in result.checks]
    assert len(set(names)) == len(names)
    assert [c.name for c in result.checks[:len(CONTRACT_NAMES)]] == list(CONTRACT_NAMES)
    for name, passed, detail in result.checks[:len(CONTRACT_NAMES)]:
        assert passed is True and detail == f"held in all {N_VALUE_CHECKS} calls", name
    # every value and layout check's detail reports the ratio worst_ratio records for it (3 significant digits)
    for name, passed, detail in result.checks[len(CONTRACT_NAMES):]:
        assert passed is True, name
        reported = float(re.search(r"err/tol = ([^)]+)\)", detail).group(1))
        assert reported == float(f"{result.worst_ratio[name]:.3g}"), (name, detail)
    value = next(c for c in result.checks if c.name == "ring2d vp-linear t=0.30 g=3.3 tails: matches analytic CFG")
    assert "tol" in value.detail and "max |err|" in value.detail
    assert result.summary() == f"{len(result.checks)} passed, 0 failed"


class _Recorder:
    """A correct combiner that keeps every input it is given, with a copy taken at call time."""

    def __init__(self):
        self.calls = []

    def __call__(self, eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
        tensors = (eps_uncond, eps_cond, x)
        self.calls.append((tensors, tuple(t.clone() for t in tensors), guidance_scale, alpha, sigma))
        return torch.lerp(eps_uncond, eps_cond, guidance_scale)


def test_audit_never_mutates_what_it_passes_and_passes_fresh_copies():
    recorder = _Recorder()
    assert audit_cfg(recorder).passed
    assert len(recorder.calls) == 2 * N_VALUE_CHECKS + 4
    storages = set()
    for tensors, copies, *_ in recorder.calls:
        for t, c in zip(tensors, copies, strict=True):
            assert torch.equal(t, c)  # nothing wrote into the inputs after the call returned
        storages.add(tensors[2].untyped_storage().data_ptr())
    # every call got its own x: a combiner that writes into its inputs cannot reach another check
    assert len(storages) == len(recorder.calls)


def test_grid_covers_dimensions_scales_and_noise_levels():
    recorder = _Recorder()
    audit_cfg(recorder)
    dims = {tensors[0].shape[1] for tensors, *_ in recorder.calls}
    scales = {g for *_, g, _, _ in recorder.calls}
    coefficients = {(a, s) for *_, a, s in recorder.calls}
    assert dims == {1, 2, 16}
    assert scales == set(GUIDANCE_SCALES) and {0.0, 1.0, 7.5} <= scales and len(scales - {0.0, 1.0}) >= 3
    assert all(t.dtype == torch.float64 for tensors, *_ in recorder.calls for t in tensors)
    assert any(s < 0.1 for _, s in coefficients)                       # low noise
    assert any(a < 0.05 for a, _ in coefficients)                      # alpha small
    assert any(0.5 < a / s < 1.0 for a, s in coefficients)             # alpha ~ sigma, not equal
    assert any(a == 1.0 and s > 10 for a, s in coefficients)           # non-VP, sigma >> 1
    assert all(a != s for a, s in coefficients)
    batch_sizes = {tensors[0].shape[0] for tensors, *_ in recorder.calls}
    assert batch_sizes == {32}


def test_inputs_are_the_analytic_predictions():
    """The bulk inputs of one case are the exact eps of the world, at points drawn from the noised laws."""
    from toy_models.denoiser import AnalyticDenoiser
    from toy_models.scenarios import get_world

    recorder = _Recorder()
    audit_cfg(recorder)
    den = AnalyticDenoiser(get_world("attributes2d"), "vp-linear")
    alpha, sigma = (float(v) for v in den.schedule.alpha_sigma(0.3))
    hits = [c for c in recorder.calls if c[3] == alpha and c[4] == sigma and c[0][0].shape[1] == 2
            and torch.equal(c[1][1], den.eps(c[1][2], 0.3, ("red", "dog")))]
    assert hits, "no call carried attributes2d's exact conditional eps at t = 0.3"
    for _, (eps_u, _, x), *_ in hits:
        assert torch.equal(eps_u, den.eps(x, 0.3, None))


def test_raising_combiner_fails_without_raising():
    def broken(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
        raise RuntimeError("boom")

    result = audit_cfg(broken)
    assert not result.passed
    assert all("raised RuntimeError: boom" in c.detail for c in result.failures if c.name != CONTRACT_NAMES[4])
    assert result.checks[4].passed  # the inputs were not touched
    assert result.checks[6].passed  # raising the same way twice is deterministic


def test_wrong_signature_fails():
    def positional_only(eps_uncond, eps_cond, guidance_scale):
        return torch.lerp(eps_uncond, eps_cond, guidance_scale)

    result = audit_cfg(positional_only)
    assert not result.passed
    assert "unexpected keyword argument" in result.failures[0].detail


def test_non_callable_is_rejected():
    with pytest.raises(TypeError, match="combine"):
        audit_cfg(42)


def test_seed_changes_points_not_verdicts():
    assert audit_cfg(mutants.x0_space, seed=1).passed
    assert not audit_cfg(mutants.sign_error, seed=1).passed


# ----------------------------------------------------------------------------------------------------------------
# The tolerance: it bounds every correct route, on inputs far wider than the audit's grid
# ----------------------------------------------------------------------------------------------------------------
_log_coefficient = st.floats(min_value=-4.0, max_value=2.0)


@given(log_alpha=_log_coefficient, log_sigma=_log_coefficient, g=st.sampled_from(GUIDANCE_SCALES + (-2.0, 20.0)),
       seed=st.integers(0, 2**31 - 1), x_scale=st.floats(0.01, 100.0))
def test_tolerance_bounds_every_correct_route(log_alpha, log_sigma, g, seed, x_scale):
    alpha, sigma = 10.0**log_alpha, 10.0**log_sigma
    gen = torch.Generator().manual_seed(seed)
    eps_u, eps_c = (torch.randn(64, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    x = x_scale * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    ref = eps_u + g * (eps_c - eps_u)
    tol = cfg_tolerance(eps_u, eps_c, x, g, sigma)
    for name, combine in mutants.CORRECT.items():
        out = combine(eps_u, eps_c, g, x=x, alpha=alpha, sigma=sigma)
        assert bool(((out - ref).abs() <= tol).all()), (name, float(((out - ref).abs() / tol).max()))


def test_tolerance_formula():
    a = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 4.0]], dtype=torch.float64)
    x = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    from verify.tolerances import gamma

    tol = cfg_tolerance(a, b, x, 3.0, 0.5)
    k = 1 + 3 + 2
    expected = gamma(18, torch.float64) * k * torch.tensor([[1.0 + 0.5 + 12.0, 2.0 + 4.0]], dtype=torch.float64)
    assert torch.allclose(tol, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("spec", ["no_colon", "a:b:c", ":f", "audit_mutants:", "", "  :  "])
def test_load_combiner_rejects_malformed_spec(spec):
    with pytest.raises(ValueError, match="spec"):
        load_combiner(spec)


def test_load_combiner_errors_name_the_spec():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(SpecError, match=r"^spec: .*no module named 'no_such_module_xyz'"):
        load_combiner("no_such_module_xyz:f")
    with pytest.raises(ValueError, match=r"spec.*has no attribute 'no_such_function'"):
        load_combiner("audit_mutants:no_such_function")
    with pytest.raises(ValueError, match=r"spec.*not a callable"):
        load_combiner("audit_mutants:MUTANTS")


def test_load_combiner_finds_attributes_and_dotted_paths():
    assert load_combiner("audit_mutants:lerp_eps") is mutants.lerp_eps
    assert load_combiner(" verify.rules.cfg : cfg ") is cfg
    assert load_combiner("audit_mutants:MUTANTS.get") == mutants.MUTANTS.get


def test_load_combiner_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd_combiner_mod.py").write_text(textwrap.dedent("""
        def combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
            return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    """))
    (tmp_path / "cwd_broken_mod.py").write_text("import cwd_missing_dependency_xyz\n")
    (tmp_path / "cwd_syntax_mod.py").write_text("def f(:\n")
    try:
        combine = load_combiner("cwd_combiner_mod:combine")
        assert audit_cfg(combine).passed
        with pytest.raises(ValueError, match=r"spec.*cwd_missing_dependency_xyz"):
            load_combiner("cwd_broken_mod:f")
        with pytest.raises(ValueError, match=r"spec.*SyntaxError"):
            load_combiner("cwd_syntax_mod:f")
    finally:
        for name in ("cwd_combiner_mod", "cwd_broken_mod", "cwd_syntax_mod"):
            sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------------------------
# Time limits: a combiner that never returns cannot hold the audit
# ----------------------------------------------------------------------------------------------------------------
def _sleeps(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    time.sleep(600)


def _sleeps_at_layout(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Right until the first diffusers-layout call (eps_uncond a view into a [2N, d] batch), then hangs."""
    if eps_uncond.untyped_storage().nbytes() > eps_uncond.numel() * eps_uncond.element_size():
        time.sleep(600)
    return torch.lerp(eps_uncond, eps_cond, guidance_scale)


def _swallows(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Catches everything, the timeout included, and goes on sleeping for 2 s more: the watchdog re-raises."""
    for _ in range(4):
        try:
            time.sleep(0.5)
        except BaseException:  # noqa: BLE001, S110 - the point of this combiner
            pass
    time.sleep(600)


FIRST_CHECK = "bimodal1d vp-linear t=0.02 g=0 bulk: endpoint, equals eps_uncond"
# The watchdog fires at the deadline; the audit then unwinds one sleep call. Slack 1.5 s on a loaded 2-core
# machine, far below the 600 s the combiner would sleep.
SLACK_S = 1.5


def test_timeout_stops_a_sleeping_combiner_and_names_the_check():
    start = time.monotonic()
    with pytest.raises(AuditTimeout) as caught:
        audit_cfg(_sleeps, timeout=1.0)
    assert time.monotonic() - start < 1.0 + SLACK_S
    exc = caught.value
    assert (exc.timeout, exc.done, exc.total) == (1.0, 0, N_VALUE_CHECKS + 4)
    assert exc.what.startswith(f"check {FIRST_CHECK!r} (first of its 2 calls; world=bimodal1d, condition=1, "
                               "schedule=vp-linear, t=0.02, alpha=")
    assert "guidance_scale=0, points=bulk, x of shape [32, 1])" in exc.what
    assert str(exc).startswith(f"timed out after 1 s during check {FIRST_CHECK!r}")
    assert not isinstance(exc, Exception)  # a combiner's `except Exception` cannot swallow it


def test_timeout_counts_finished_checks():
    """The layout checks run last: by then every value check has finished, and the timeout says so."""
    with pytest.raises(AuditTimeout) as caught:
        audit_cfg(_sleeps_at_layout, timeout=3.0)
    assert caught.value.done == N_VALUE_CHECKS
    assert "diffusers layout" in caught.value.what and "(layout check; world=bimodal1d" in caught.value.what


def test_timeout_survives_a_combiner_that_swallows_it():
    start = time.monotonic()
    with pytest.raises(AuditTimeout):
        audit_cfg(_swallows, timeout=0.5)
    assert time.monotonic() - start < 2.0 + 0.5 + SLACK_S  # its 4 swallowed sleeps, then the next re-raise


def test_timeout_off_the_main_thread_uses_a_worker():
    """No SIGALRM off the main thread: the checks run in a daemon worker that the caller stops waiting for."""
    outcome = {}

    def run():
        start = time.monotonic()
        try:
            audit_cfg(_sleeps, timeout=1.0)
        except AuditTimeout as exc:
            outcome["exc"], outcome["elapsed"] = exc, time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert outcome["elapsed"] < 1.0 + SLACK_S and FIRST_CHECK in outcome["exc"].what
    assert audit_cfg(mutants.lerp_eps, timeout=60.0).passed  # and a finishing audit is unaffected on the main thread


def test_timeout_leaves_no_alarm_behind():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    assert audit_cfg(mutants.lerp_eps, timeout=60.0).passed
    with pytest.raises(AuditTimeout):
        audit_cfg(_sleeps, timeout=0.5)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == before


@pytest.mark.parametrize(("timeout", "error"), [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                                (float("inf"), ValueError), ("5", TypeError), (True, TypeError)])
def test_bad_timeout_names_the_argument(timeout, error):
    with pytest.raises(error, match=r"^timeout:"):
        audit_cfg(mutants.lerp_eps, timeout=timeout)


def test_progress_reports_every_check():
    calls = []
    audit_cfg(mutants.lerp_eps, progress=lambda done, total, what: calls.append((done, total, what)))
    total = N_VALUE_CHECKS + 4
    assert calls[-1] == (total, total, "finished")
    assert [c[0] for c in calls[:-1]] == sorted(c[0] for c in calls[:-1]) and calls[0][0] == 0
    assert len(calls) == 2 * N_VALUE_CHECKS + 4 + 1  # two calls per value check, one per layout check, the end
