"""Mutation testing of cfgtruth's core modules: do the tests catch the bugs they claim to? (issue part 7)

A *mutant* is one realistic bug planted in one place of the source (a sign error, the guidance-strength
convention off by one, a missing centring, a reduction over the wrong axis, a dropped term, a removed input check,
a tolerance loosened tenfold, a missing copy of the caller's input ...). Each mutant names the few test files or
test ids that should catch it. The runner plants the mutants one at a time in a private copy of the working tree,
runs those tests there, and records whether they failed (the mutant is *killed*) or passed (it *survived*).

Running it
----------
From the repository root (it is a benchmark, not part of CI; a full run of the 85 mutants takes about 15 minutes on
a 2-core CPU: 2 minutes of baseline, then 3 to 45 s per mutant)::

    python benchmarks/mutation.py                        # every mutant, one at a time
    python benchmarks/mutation.py --list                 # ids, files, tests and bugs, without running anything
    python benchmarks/mutation.py --only GM-SAMPLE-CHOL TOL-UNIT-EPS   # just these (ids or fnmatch patterns)
    python benchmarks/mutation.py --show GM-SAMPLE-CHOL  # the mutant as a diff
    python benchmarks/mutation.py --timeout 300 --jobs 1 --json results/mutation.json

Options: ``--timeout S`` per mutant (default 180 s; a mutant whose tests run out of time counts as killed, and is
flagged), ``--jobs N`` mutants at once, each in its own copy of the tree (default 1: the tests already use two
threads), ``--no-baseline`` skips the baseline run described below, ``--json PATH`` writes every result.

What it does
------------
1. Copies the working tree once into a temporary folder (``git ls-files --cached --others --exclude-standard``:
   tracked files and untracked files that git does not ignore; uncommitted edits are included, ``__pycache__``,
   ``results/`` and ``.git`` are not), and checks that ``python -c "import toy_models, verify"`` run there with
   ``PYTHONPATH=<copy>`` imports the *copy's* modules, not the editable install (it stops if not).
2. Collects the selected mutants' tests (``pytest --collect-only``): a test id that no longer exists (renamed or
   removed by its owner) is reported, and its mutants end as ``error`` instead of stopping the run.
3. Baseline: runs the union of the selected mutants' tests once on the unmutated copy. A test that already fails
   there cannot tell anything about a mutant; it is reported and deselected (``--deselect``) in every mutant run.
   Failed test ids are recorded by a small pytest plugin (``-p``), not parsed from pytest's output (ids may
   contain spaces).
4. For each mutant: checks that its ``original`` snippet occurs exactly once in its file (else the mutant is
   *stale*: the file changed under it, update the snippet), writes the mutated file, checks that it still
   compiles (else *invalid*), runs ``python -m pytest -x -q -p no:cacheprovider <tests>`` with ``cwd`` and
   ``PYTHONPATH`` set to the copy and ``PYTHONDONTWRITEBYTECODE=1`` (no stale ``.pyc`` of an earlier mutant can
   be imported), then restores the file byte for byte. Mutants of :data:`LATE_FILES` (modules that were being
   edited when their mutants were written) run last.

Results: ``killed`` (the tests failed, pytest exit status 1, or could not import the mutated module, 2; the first
failing test is shown), ``survived`` (the tests passed), ``timeout`` (counted as killed, flagged), ``stale``,
``invalid``, ``error`` (pytest could not run the tests: a test id that no longer exists, exit status 3, 4 or 5).

What the numbers mean
---------------------
``kill rate = killed / (killed + survived)``, timeouts counted as killed, over the mutants *not* marked
``equivalent=True``. An equivalent mutant changes the source but no observable behaviour (its ``reason`` says why,
e.g. a transpose of a matrix that is always symmetric); it is still run and listed, but it cannot be killed, so
it is not counted. A survivor that is not equivalent is a hole in the tests: close it with a test (the mutants of
this file are closed in ``tests/test_mutation_holes.py``), add that test to the mutant's ``tests`` and say so in
its ``reason`` (``--list`` shows it). The target
is a kill rate of at least 90 % with every survivor explained. Stale, invalid and error mutants are not counted
either, and the runner exits with status 1 when there is any survivor, stale, invalid or error mutant (0 otherwise).

Adding a mutant
---------------
Append a :class:`Mutant` to :data:`MUTANTS`::

    Mutant("SCH-VP-DRIFT-SIGN", "toy_models/schedules.py",
           original="        return -0.5 * (self.beta_0 + (self.beta_1 - self.beta_0) * t)\\n",
           replacement="        return 0.5 * (self.beta_0 + (self.beta_1 - self.beta_0) * t)\\n",
           description="VP-linear drift f(t) with the wrong sign",
           tests=("tests/test_schedules.py",)),

``original`` must occur exactly once in the file (include a neighbouring line if needed); keep ``tests`` short
(whole files or ``file::test`` ids) so that one mutant runs in under a minute; write a realistic bug, the kind a
person would make, not a random token swap. Check it with ``--only ID``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import difflib
import fnmatch
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
EXCLUDED_PARTS = {".git", "__pycache__", "results", ".pytest_cache", ".hypothesis", ".ruff_cache"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug: ``original`` (occurring exactly once in ``file``) replaced by ``replacement``."""

    id: str
    file: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]
    equivalent: bool = False
    reason: str = ""  # why an equivalent mutant cannot change behaviour, or how a survivor was closed


# ----------------------------------------------------------------------------------------------------------------
# Test selections (short, so that one mutant runs in well under a minute)
# ----------------------------------------------------------------------------------------------------------------
HOLES = "tests/test_mutation_holes.py"
GM = "tests/test_gaussian_mixture.py"
GM_FAST = tuple(f"{GM}::{name}" for name in (
    "test_log_prob_matches_scipy", "test_bayes_identity_at_every_noise_level", "test_conditions_select_components",
    "test_cdf_matches_scipy", "test_noised_parameters_are_exact", "test_sample_moments_match_closed_form",
    "test_sampling_is_reproducible_and_dtype_consistent", "test_far_points_and_tiny_sigma_against_mpmath",
    "test_narrow_far_mode_log_prob_regression", "test_bad_construction_raises", "test_bad_calls_raise",
    "test_input_policy_at_construction", "test_far_narrow_law_keeps_its_covariance",
    "test_integer_parameters_are_converted_exactly", "test_caller_arrays_are_copied",
    "test_huge_and_wrong_kind_inputs_are_refused_not_nan", "test_huge_but_representable_inputs_stay_finite",
    "test_zero_weight_component_is_inert"))
GM_SCORE = (f"{GM}::test_score_matches_autograd_of_log_prob", f"{GM}::test_far_points_and_tiny_sigma_against_mpmath",
            f"{GM}::test_narrow_far_modes_against_mpmath", f"{GM}::test_huge_but_representable_inputs_stay_finite")
SCHED = ("tests/test_schedules.py",)
PARAM = ("tests/test_parametrization.py",)
DENOISER = ("tests/test_denoiser.py",)
NEURAL = ("tests/test_neural.py",)
AUDIT = ("tests/test_audit.py",)
RULE_FUNCTIONS = ("tests/test_rule_functions.py",)
SAMPLERS = ("tests/test_samplers.py",)
TILTED = ("tests/test_tilted.py",)
METRICS = ("tests/test_metrics.py",)
EXACT = "tests/test_exact_law.py"
EXACT_FAST = tuple(f"{EXACT}::{name}" for name in (
    "test_ode_variance_matches_closed_form", "test_unguided_from_the_marginal_returns_the_data_law",
    "test_full_covariances_decouple_into_one_dimensional_laws", "test_bad_arguments",
    "test_other_entry_points_refuse_bad_arguments_naming_them",
    "test_mixture_references_agree_with_the_moment_odes_on_a_gaussian_world"))


# ----------------------------------------------------------------------------------------------------------------
# The mutants
# ----------------------------------------------------------------------------------------------------------------
MUTANTS: list[Mutant] = [
    # --- toy_models/gaussian_mixture.py -------------------------------------------------------------------------
    Mutant("GM-SOFTMAX-SHIFT", "toy_models/gaussian_mixture.py",
           original=("    shift = log_joint.detach().amax(dim=-1, keepdim=True)  # [N, 1], finite: some weight is "
                     "positive\n"),
           replacement="    shift = torch.zeros_like(log_joint[..., :1]).detach()  # mutant: no max shift\n",
           description="responsibilities' softmax without the max shift (exp under/overflows far from the modes)",
           tests=GM_SCORE),
    Mutant("GM-NOISED-SIGMA", "toy_models/gaussian_mixture.py",
           original="cov = (self._cov64 * a) * a + s * s * torch.eye(dim, dtype=torch.float64)",
           replacement="cov = (self._cov64 * a) * a + s * torch.eye(dim, dtype=torch.float64)",
           description="noised covariance alpha^2 S + sigma I (sigma where sigma^2 belongs)",
           tests=GM_FAST),
    Mutant("GM-SYMMETRIC-CHECK", "toy_models/gaussian_mixture.py",
           original="        bad = asym > 2.0 * dim * _input_roundoff(covariances) * scale\n",
           replacement="        bad = asym > 2.0 * dim * _input_roundoff(covariances) * scale * 1e300  # mutant\n",
           description="the symmetric check of the covariances removed (any asymmetry is averaged away silently)",
           tests=GM_FAST),
    Mutant("GM-COV-CENTRING", "toy_models/gaussian_mixture.py",
           original="        spread = self._mu64 - m  # centred first",
           replacement="        spread = self._mu64  # mutant: not centred",
           description="mixture covariance() without centring the means (sum pi (S + mu mu^T), no - m m^T)",
           tests=GM_FAST),
    Mutant("GM-POSTERIOR-GRAD-SIGN", "toy_models/gaussian_mixture.py",
           original="        return self._weighted_component_score(r_c - r, grads)\n",
           replacement="        return self._weighted_component_score(r - r_c, grads)\n",
           description="grad log p(c|x) with the sign flipped (r - r^c instead of r^c - r)",
           tests=(f"{GM}::test_bayes_identity_at_every_noise_level",)),
    Mutant("GM-CDF-VARIANCE", "toy_models/gaussian_mixture.py",
           original="        std = self._chol64[:, 0, 0]\n",
           replacement="        std = self._cov64[:, 0, 0]  # mutant: the variance\n",
           description="1-D cdf standardised by the variance instead of the standard deviation",
           tests=GM_FAST),
    Mutant("GM-LOGDET-HALF", "toy_models/gaussian_mixture.py",
           original="self._log_joint_const = (self._log_w + (-log_det_half - 0.5 * dim * _LOG_2PI).to(dtype))",
           replacement="self._log_joint_const = (self._log_w + (-2.0 * log_det_half - 0.5 * dim * _LOG_2PI).to(dtype))",
           description="log det Sigma used where log |L| = log det Sigma / 2 belongs in the normaliser",
           tests=GM_FAST),
    Mutant("GM-SAMPLE-CHOL", "toy_models/gaussian_mixture.py",
           original="            out[idx] = self._mu64[k] + noise[idx] @ self._chol64[k].T\n",
           replacement="            out[idx] = self._mu64[k] + noise[idx] @ self._chol64[k]\n",
           description="samples drawn with covariance L^T L instead of L L^T (transpose dropped)",
           tests=GM_FAST),
    Mutant("GM-POSTERIOR-AXIS", "toy_models/gaussian_mixture.py",
           original="        return torch.logsumexp(log_joint[:, mask], dim=-1) - torch.logsumexp(log_joint, dim=-1)\n",
           replacement=("        return torch.logsumexp(log_joint[:, mask], dim=-1) - torch.logsumexp(log_joint, "
                        "dim=0).mean()\n"),
           description="log p(c|x) normalised by a log-sum-exp over the points (wrong axis) instead of the components",
           tests=(*GM_FAST, f"{HOLES}::test_log_condition_posterior_is_bayes_rule"),
           reason="survived the suite; closed by test_mutation_holes.py::test_log_condition_posterior_is_bayes_rule"),

    # --- toy_models/_checks.py ----------------------------------------------------------------------------------
    Mutant("CHK-NAN", "toy_models/_checks.py",
           original="    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())\n",
           replacement="    return not math.isinf(float(values.sum())) or bool(torch.isfinite(values).all())\n",
           description="the finiteness check tests isinf only: NaN passes the input policy",
           tests=(f"{GM}::test_bad_construction_raises", f"{GM}::test_bad_calls_raise", *DENOISER)),
    Mutant("CHK-COPY", "toy_models/_checks.py",
           original="        tensor = tensor.detach().clone()\n",
           replacement="        tensor = tensor.detach()  # mutant: no copy\n",
           description="parameters kept by reference: the caller's tensor is not copied",
           tests=(f"{GM}::test_caller_arrays_are_copied", *PARAM)),
    Mutant("CHK-FLOAT16", "toy_models/_checks.py",
           original="    if tensor.dtype in _LOW_PRECISION:\n",
           replacement="    if tensor.dtype in ():  # mutant\n",
           description="float16/bfloat16 inputs accepted (converted silently) instead of refused",
           tests=(f"{GM}::test_input_policy_at_construction",
                  f"{GM}::test_huge_and_wrong_kind_inputs_are_refused_not_nan", *DENOISER)),
    Mutant("CHK-EXACT-INT", "toy_models/_checks.py",
           original="        if tensor.numel() and int(tensor.detach().abs().max()) > limit:\n",
           replacement="        if tensor.numel() and int(tensor.detach().abs().max()) >= limit:\n",
           description="off by one at the exact-integer limit: 2**24 (float32) / 2**53 (float64) refused",
           tests=(f"{GM}::test_input_policy_at_construction", f"{GM}::test_integer_parameters_are_converted_exactly",
                  *DENOISER, f"{HOLES}::test_integers_up_to_the_exact_limit_are_accepted_and_beyond_refused",
                  f"{HOLES}::test_integer_points_at_the_float32_limit_are_evaluated"),
           reason="survived the suite; closed by test_mutation_holes.py::test_integers_up_to_the_exact_limit_*"),
    Mutant("CHK-BOOL", "toy_models/_checks.py",
           original="    if tensor.dtype == torch.bool:\n",
           replacement="    if False:  # mutant: bool tensors accepted\n",
           description="bool tensors accepted as numbers (True -> 1.0)",
           tests=(f"{GM}::test_input_policy_at_construction",
                  f"{GM}::test_huge_and_wrong_kind_inputs_are_refused_not_nan", *DENOISER)),

    # --- toy_models/schedules.py --------------------------------------------------------------------------------
    Mutant("SCH-VP-BETA1", "toy_models/schedules.py",
           original="    beta_1: float = 20.0\n",
           replacement="    beta_1: float = 19.9\n",
           description="vp-linear beta_1 = 19.9 (the slope of beta(t) = 0.1 + 19.9 t taken for its end value)",
           tests=SCHED),
    Mutant("SCH-COSINE-S", "toy_models/schedules.py",
           original="    s: float = 0.008\n",
           replacement="    s: float = 0.08\n",
           description="vp-cosine offset s = 0.08 instead of Nichol & Dhariwal's 0.008",
           tests=SCHED),
    Mutant("SCH-VP-DRIFT-SIGN", "toy_models/schedules.py",
           original="        return -0.5 * (self.beta_0 + (self.beta_1 - self.beta_0) * t)\n",
           replacement="        return 0.5 * (self.beta_0 + (self.beta_1 - self.beta_0) * t)\n",
           description="vp-linear drift f(t) with the wrong sign",
           tests=SCHED),
    Mutant("SCH-VE-DIFFUSION", "toy_models/schedules.py",
           original="        return 2.0 * self._sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)\n",
           replacement="        return self._sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)\n",
           description="VE g(t)^2 = d sigma^2/dt with the factor 2 of the chain rule dropped",
           tests=SCHED),
    Mutant("SCH-RF-DIFFUSION", "toy_models/schedules.py",
           original="        return 2.0 * t / (1.0 - t)\n",
           replacement="        return 2.0 * t\n",
           description="rectified-flow g(t)^2 = d sigma^2/dt only, the -2 f sigma^2 term dropped",
           tests=SCHED),

    # --- toy_models/parametrization.py --------------------------------------------------------------------------
    Mutant("PAR-SCORE-SIGN", "toy_models/parametrization.py",
           original="        return lambda p, x: -p / sigma\n",
           replacement="        return lambda p, x: p / sigma\n",
           description="score = +eps / sigma (sign error)",
           tests=PARAM),
    Mutant("PAR-V-TO-EPS", "toy_models/parametrization.py",
           original="        return lambda p, x: (alpha * p + sigma * x) / s2\n",
           replacement="        return lambda p, x: (alpha * p - sigma * x) / s2\n",
           description="v -> eps with the sign of the sigma x term flipped",
           tests=PARAM),
    Mutant("PAR-CLONE", "toy_models/parametrization.py",
           original="    if not steps:\n        return p.clone()\n",
           replacement="    if not steps:\n        return p\n",
           description="convert(pred, k, k) returns the caller's tensor itself (missing copy)",
           tests=PARAM),
    Mutant("PAR-ZERO-ALPHA", "toy_models/parametrization.py",
           original="(\"eps\", \"x0\"): (\"alpha\",)",
           replacement="(\"eps\", \"x0\"): ()",
           description="eps -> x0 forgets that it divides by alpha: alpha = 0 is not refused (inf/NaN returned)",
           tests=PARAM),
    Mutant("PAR-X0-TO-V-VP", "toy_models/parametrization.py",
           original="        return lambda p, x: (alpha * x - s2 * p) / sigma\n",
           replacement="        return lambda p, x: (alpha * x - p) / sigma  # mutant: assumes alpha^2 + sigma^2 = 1\n",
           description="x0 -> v assumes a VP schedule (alpha^2 + sigma^2 = 1), wrong on VE/EDM",
           tests=PARAM),
    Mutant("PAR-RESCALE-BACK", "toy_models/parametrization.py",
           original=("    out = torch.ldexp(formula(*(torch.ldexp(tensor, -exponent) for tensor in tensors)), "
                     "exponent)\n"),
           replacement=("    out = formula(*(torch.ldexp(tensor, -exponent) for tensor in tensors))  # mutant: not "
                        "scaled back\n"),
           description="overflow-safe path: the power-of-two scaling is not undone on the result",
           tests=PARAM),

    # --- toy_models/denoiser.py ---------------------------------------------------------------------------------
    Mutant("DEN-EPS-ALPHA", "toy_models/denoiser.py",
           original="        sigma = self._per_row(self.schedule.sigma(t), x)\n",
           replacement="        sigma = self._per_row(self.schedule.alpha(t), x)\n",
           description="eps = -alpha * score (alpha where sigma belongs)",
           tests=DENOISER),
    Mutant("DEN-NOISED-SWAP", "toy_models/denoiser.py",
           original="        return self.world.law(condition).noised(float(alpha), float(sigma))\n",
           replacement="        return self.world.law(condition).noised(float(sigma), float(alpha))\n",
           description="noised law with alpha and sigma swapped",
           tests=DENOISER),
    Mutant("DEN-PER-ROW-CONDITION", "toy_models/denoiser.py",
           original="            out[rows] = self.noised_law(float(value), condition).score(x[rows]).to(x.dtype)\n",
           replacement="            out[rows] = self.noised_law(float(value), None).score(x[rows]).to(x.dtype)\n",
           description="per-row times: the condition dropped (unconditional score returned)",
           tests=DENOISER),
    Mutant("DEN-MULTI-ORDER", "toy_models/denoiser.py",
           original="        return [self.eps(x, t, c) for c in conditions]\n",
           replacement="        return [self.eps(x, t, c) for c in reversed(conditions)]\n",
           description="eps_multi returns the predictions in reverse order (null and conditional branches swapped)",
           tests=(*DENOISER, *RULE_FUNCTIONS)),

    # --- verify/rules/ (the guidance rules, one file each, and the guided denoiser) --------------------------------
    Mutant("GUI-CONVENTION", "verify/rules/_math.py",
           original="    return 1.0 + as_scalar(w, \"w\")\n",
           replacement="    return as_scalar(w, \"w\")  # mutant: w taken for the guidance_scale\n",
           description="off by one in the convention: guidance_scale = w instead of 1 + w",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-CFG-BRANCHES", "verify/rules/cfg.py",
           original="    return combine_homogeneous(lambda u, c: torch.lerp(u, c, g), tensors, \"eps_cond\")\n",
           replacement="    return combine_homogeneous(lambda u, c: torch.lerp(c, u, g), tensors, \"eps_cond\")\n",
           description="CFG with the null and conditional branches swapped",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-CG-SIGN", "verify/rules/classifier.py",
           original="lambda e, gr: e - k * gr, [eps, grad]",
           replacement="lambda e, gr: e + k * gr, [eps, grad]",
           description="classifier guidance eps + s sigma grad log p(y|x) (sign error: pushes away from the class)",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-NEG000-SIGN", "verify/rules/negative_prompt_000.py",
           original="lambda n, p, g: n + wp * (p - n) - wn * (g - n)",
           replacement="lambda n, p, g: n + wp * (p - n) + wn * (g - n)",
           description="source 000's negative prompt with the negative term added instead of subtracted",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-COMPOSE-NULL", "verify/rules/compose.py",
           original="    rest_weight = 1.0 - float(sum(weights))\n",
           replacement="    rest_weight = 0.0  # mutant: the null prediction's term dropped\n",
           description="composition without the (1 - sum w_k) eps_null term",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-RESCALE-AXIS", "verify/rules/rescale.py",
           original="torch.frexp(torch.ldexp(diff, -top2).std(dim=1, keepdim=True))",
           replacement="torch.frexp(torch.ldexp(diff, -top2).std(dim=0, keepdim=True))",
           description="guidance rescale: standard deviation over the batch axis instead of the features",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-DYNAMIC-SCALE", "verify/rules/dynamic_threshold.py",
           original="    x0_new = torch.maximum(torch.minimum(x0, s), -s) * (limit / s)\n",
           replacement="    x0_new = torch.maximum(torch.minimum(x0, s), -s)  # mutant: not divided by s / limit\n",
           description="dynamic thresholding clips to [-s, s] but does not divide by s (the rescaling term dropped)",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-INTERVAL-FALLBACK", "verify/rules/interval.py",
           original="        return preds[\"cond\"]\n",
           replacement="        return preds[\"uncond\"]  # mutant: unconditional outside the interval\n",
           description="guidance interval: the unconditional prediction outside it instead of the conditional one",
           tests=RULE_FUNCTIONS),
    Mutant("GUI-INTERVAL-OPEN", "verify/rules/interval.py",
           original="        return self.sigma_lo < noise_to_signal <= self.sigma_hi\n",
           replacement="        return self.sigma_lo < noise_to_signal < self.sigma_hi\n",
           description="guidance interval open at the top instead of (sigma_lo, sigma_hi] (no guidance at sigma_hi)",
           tests=(*RULE_FUNCTIONS, f"{HOLES}::test_guidance_interval_edges"),
           reason=("the suite's interval tests sit away from the edges; closed by "
                   "test_mutation_holes.py::test_guidance_interval_edges")),
    Mutant("GUI-CG-BASE", "verify/rules/_base.py",
           original="        bound.setdefault(\"uncond\", None)\n",
           replacement="        bound.setdefault(\"uncond\", bound.get(\"cond\"))  # mutant\n",
           description=("the null branch bound to the conditional prompt when not given: classifier guidance (and "
                        "CFG) on the conditional model's eps instead of the unconditional one"),
           tests=RULE_FUNCTIONS),
    Mutant("GUI-NEG000-WEIGHTS", "verify/rules/negative_prompt_000.py",
           original="\"uncond\": 1.0 - self.w_pos + self.w_neg}",
           replacement="\"uncond\": 1.0 - self.w_pos - self.w_neg}",
           description=("source 000's negative prompt with the null weight the text writes, 1 - w+ - w-: the linear "
                        "weights (read by the tilted targets and exact laws) no longer those of its own combiner"),
           tests=RULE_FUNCTIONS),

    # --- verify/samplers.py -------------------------------------------------------------------------------------
    Mutant("SAM-DDIM-ETA", "verify/samplers.py",
           original="math.sqrt(1.0 - eta * eta * q)",
           replacement="math.sqrt(1.0 - eta * q)",
           description="DDIM's deterministic coefficient with eta where eta^2 belongs",
           tests=(*SAMPLERS, f"{HOLES}::test_ddim_keeps_the_forward_marginal_of_a_point_mass_for_every_eta"),
           reason=("survived the suite (eta = 0 and 1, the values tested, cannot tell eta^2 from eta); closed by "
                   "test_mutation_holes.py::test_ddim_keeps_the_forward_marginal_of_a_point_mass_for_every_eta")),
    Mutant("SAM-DDPM-COEF", "verify/samplers.py",
           original="        coef_x = (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2\n",
           replacement="        coef_x = (alpha_t / alpha_s) * (sigma_s / sigma_t)\n",
           description="DDPM posterior mean coefficient of x_t with sigma_s/sigma_t unsquared",
           tests=SAMPLERS),
    Mutant("SAM-EM-NOISE", "verify/samplers.py",
           original="math.sqrt(g2 * (t - s)) * draw(i)",
           replacement="math.sqrt(g2) * (t - s) * draw(i)",
           description="Euler-Maruyama noise scaled by dt instead of sqrt(dt)",
           tests=SAMPLERS),
    Mutant("SAM-HEUN-HALF", "verify/samplers.py",
           original="            x = x + (0.5 * (s - t)) * (velocity + ",
           replacement="            x = x + (s - t) * (velocity + ",
           description="Heun's corrector without the 1/2 of the trapezoid",
           tests=SAMPLERS),
    Mutant("SAM-DPM-RATIO", "verify/samplers.py",
           original="                half_inv_r = 0.5 * h / h_prev  # 1 / (2 r_i)\n",
           replacement="                half_inv_r = 0.5 * h_prev / h  # mutant: r_i / 2\n",
           description="DPM-Solver++(2M) with r_i / 2 where 1 / (2 r_i) belongs",
           tests=SAMPLERS),
    Mutant("SAM-SDE-DRIFT", "verify/samplers.py",
           original="    return f * x - (g2 if sde else 0.5 * g2) * score\n",
           replacement="    return f * x - 0.5 * g2 * score  # mutant: the reverse SDE gets the ODE's g^2/2\n",
           description="reverse-SDE drift with the probability-flow factor g^2/2 instead of g^2",
           tests=SAMPLERS),
    Mutant("SAM-NAN-CHECK", "verify/samplers.py",
           original="    if not all_finite(pred):\n",
           replacement="    if False:  # mutant: predictions not checked\n",
           description="the check of the denoiser's predictions for NaN/inf removed",
           tests=SAMPLERS),
    Mutant("SAM-DECREASING", "verify/samplers.py",
           original=("    if not bool((times[1:] < times[:-1]).all()):\n        raise ValueError(\"timesteps: must "
                     "be strictly"),
           replacement=("    if not bool((times[1:] <= times[:-1]).all()):\n        raise ValueError(\"timesteps: "
                        "must be strictly"),
           description="repeated times accepted (decreasing, not strictly): a zero-length step",
           tests=SAMPLERS),

    # --- verify/tilted.py ---------------------------------------------------------------------------------------
    Mutant("TIL-GAUSS-EXPONENT", "verify/tilted.py",
           original="            eta += e * prec @ mu\n",
           replacement="            eta += prec @ mu\n",
           description="closed-form tilted mean: the exponent dropped from the natural parameter",
           tests=TILTED),
    Mutant("TIL-TAIL-MAX", "verify/tilted.py",
           original="            total = total + e * quad.min(dim=1).values\n",
           replacement="            total = total + e * quad.max(dim=1).values\n",
           description="tail coefficient with the fastest-decaying component instead of the slowest",
           tests=TILTED),
    Mutant("TIL-NORMALISABLE-BOUND", "verify/tilted.py",
           original="        if lower > 0:\n            return True\n",
           replacement="        if upper > 0:\n            return True\n",
           description="normalisability decided from the upper bound (a certificate from the wrong side)",
           tests=(*TILTED, f"{HOLES}::test_undecided_tail_bounds_give_no_verdict"),
           reason="survived the suite; closed by test_mutation_holes.py::test_undecided_tail_bounds_give_no_verdict"),
    Mutant("TIL-GRID-CENTRING", "verify/tilted.py",
           original="        centred = mesh - mean\n",
           replacement="        centred = mesh  # mutant: not centred\n",
           description="quadrature covariance without centring (the second moment returned)",
           tests=TILTED),
    Mutant("TIL-EDGE-CHECK", "verify/tilted.py",
           original="        if float(logq[edge].max()) > peak - 40:\n",
           replacement="        if float(logq[edge].max()) > peak + 40:  # mutant: check never fires\n",
           description="the quadrature window's decay check removed (a non-decaying target integrated silently)",
           tests=(*TILTED, f"{HOLES}::test_quadrature_refuses_a_window_that_cuts_the_mass"),
           reason=("survived the suite (the computed window always reaches e^-50, so no test reached the guard); "
                   "closed by test_mutation_holes.py::test_quadrature_refuses_a_window_that_cuts_the_mass")),

    # --- verify/metrics.py --------------------------------------------------------------------------------------
    Mutant("MET-PERM-PVALUE", "verify/metrics.py",
           original="    pvalue = (1 + int((values[1:] >= values[0] - tie).sum())) / (1 + n_permutations)\n",
           replacement="    pvalue = int((values[1:] >= values[0] - tie).sum()) / n_permutations\n",
           description="permutation p-value k/B instead of (k + 1)/(B + 1) (not valid: P(p <= alpha) > alpha)",
           tests=METRICS),
    Mutant("MET-HOLM-OFF-BY-ONE", "verify/metrics.py",
           original="    thresholds = alpha / (len(p) - np.arange(len(p)))\n",
           replacement="    thresholds = alpha / (len(p) - np.arange(len(p)) + 1)\n",
           description="Holm's thresholds off by one: alpha/(m - i + 2)",
           tests=METRICS),
    Mutant("MET-ZTEST-SE", "verify/metrics.py",
           original="    z_mean = centered.mean(0) / torch.sqrt(centered.var(0) / n)\n",
           replacement="    z_mean = centered.mean(0) / torch.sqrt(centered.var(0))\n",
           description="mean z-test with the standard deviation where the standard error belongs (/ sqrt(n) dropped)",
           tests=METRICS),
    Mutant("MET-FRECHET-CROSS", "verify/metrics.py",
           original="np.trace(s1) + np.trace(s2) - 2.0 * cross",
           replacement="np.trace(s1) + np.trace(s2) - cross",
           description="Frechet distance with the cross term's factor 2 dropped",
           tests=METRICS),
    Mutant("MET-MMD-DIAGONAL", "verify/metrics.py",
           original="        return (s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1)) - 2.0 * s_xy / (n * m)\n",
           replacement="        return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)\n",
           description="unbiased MMD^2 keeps the diagonal k(u, u) terms in the within-sample sums",
           tests=METRICS),
    Mutant("MET-PR-LEVEL", "verify/metrics.py",
           original="law.log_prob(draws).double().numpy(), 1.0 - level))",
           replacement="law.log_prob(draws).double().numpy(), level))",
           description="support threshold at the level quantile of log p instead of 1 - level",
           tests=METRICS),

    # --- verify/exact_law.py ------------------------------------------------------------------------------------
    Mutant("EXL-NOISE-FACTOR", "verify/exact_law.py",
           original="            k = 0.5 * (1.0 + nu) * g2\n",
           replacement="            k = 0.5 * (2.0 - nu) * g2  # mutant\n",
           description="moment ODEs with the ODE's and the SDE's g^2 factors swapped",
           tests=EXACT_FAST),
    Mutant("EXL-SDE-COV-SIGN", "verify/exact_law.py",
           original="cov @ drift_mat.T - (nu * g2) * eye",
           replacement="cov @ drift_mat.T + (nu * g2) * eye",
           description="reverse SDE's covariance ODE with the noise term's sign flipped (time runs backwards)",
           tests=EXACT_FAST),
    Mutant("EXL-B-ALPHA", "verify/exact_law.py",
           original="            b_vec *= alpha\n",
           replacement="            b_vec *= 1.0  # mutant: alpha dropped\n",
           description="the guided score's offset b(t) without the factor alpha_t of the noised means",
           tests=EXACT_FAST),
    Mutant("EXL-MARGINAL-START", "verify/exact_law.py",
           original="        return alpha * m_c, alpha**2 * s_c + sigma**2 * np.eye(d)\n",
           replacement="        return alpha * m_c, alpha * s_c + sigma**2 * np.eye(d)\n",
           description="the noised conditional start with alpha S instead of alpha^2 S",
           tests=EXACT_FAST),
    Mutant("EXL-GUIDED-SCORE-1D", "verify/exact_law.py",
           original="        out = out + weight * _mixture_score_1d(laws[branch], x, alpha, sigma)\n",
           replacement="        out = weight * _mixture_score_1d(laws[branch], x, alpha, sigma)  # mutant\n",
           description="1-D guided score: each branch's term overwrites the sum instead of adding to it",
           tests=EXACT_FAST),
    Mutant("EXL-AFFINE-TRANSPOSE", "verify/exact_law.py",
           original="    x[1:1 + d] += chol.T  # row j: m + L e_j\n",
           replacement="    x[1:1 + d] += chol  # mutant: rows m + L^T e_j\n",
           description="discrete sampler law: the start points m + L^T e_j (transpose dropped): cov A L^T L A^T",
           tests=(*EXACT_FAST, f"{SAMPLERS[0]}::test_stepwise_discrete_law_equals_the_one_run_law",
                  f"{SAMPLERS[0]}::test_monte_carlo_matches_the_discrete_law",
                  f"{HOLES}::test_discrete_law_from_a_correlated_start"),
           reason="survived the suite (every start covariance tested was diagonal, where L = L^T); closed by "
                  "test_mutation_holes.py::test_discrete_law_from_a_correlated_start"),
    Mutant("EXL-COARSE-NOISE", "verify/exact_law.py",
           original="        coarse_noise = (noise[0::2] + noise[1::2]) / math.sqrt(2.0)\n",
           replacement="        coarse_noise = (noise[0::2] + noise[1::2]) / 2.0\n",
           description="fine-step reference: the coarse Brownian increments averaged instead of summed / sqrt 2",
           tests=(f"{EXACT}::test_fine_step_reference_measures_its_own_error",
                  f"{HOLES}::test_sde_reference_paths_converge_under_one_brownian_path"),
           reason="survived the suite (a larger error estimate still bounds the error); closed by "
                  "test_mutation_holes.py::test_sde_reference_paths_converge_under_one_brownian_path"),

    # --- verify/tolerances.py -----------------------------------------------------------------------------------
    Mutant("TOL-GAMMA-TENFOLD", "verify/tolerances.py",
           original="    nu = n * unit_roundoff(dtype)\n",
           replacement="    nu = 10 * n * unit_roundoff(dtype)  # mutant: loosened tenfold\n",
           description="every rounding bound gamma_n loosened tenfold",
           tests=(*AUDIT, *PARAM)),
    Mutant("TOL-UNIT-EPS", "verify/tolerances.py",
           original="    return torch.finfo(dtype).eps / 2.0\n",
           replacement="    return torch.finfo(dtype).eps\n",
           description="unit roundoff taken as machine epsilon (2u): every bound twice as loose",
           tests=(*AUDIT, *PARAM)),
    Mutant("TOL-BACKWARD", "verify/tolerances.py",
           original="    return 2 * n if backward else n\n",
           replacement="    return n\n",
           description="autograd's backward pass not counted in the rounding chain",
           tests=(*GM_SCORE, f"{HOLES}::test_autograd_score_bound_counts_the_chain_forward_and_back"),
           reason="survived the suite (a tighter bound still holds where errors are far below it); closed by "
                  "test_mutation_holes.py::test_autograd_score_bound_counts_the_chain_forward_and_back"),
    Mutant("TOL-COND-P2", "verify/tolerances.py",
           original="p_frob=p_frob, cond_p2=cond / eig[:, 0],",
           replacement="p_frob=p_frob, cond_p2=cond,  # mutant: ||P_k||_2 dropped",
           description="the precision's float64 preparation error without its ||P||_2 factor",
           tests=GM_SCORE),
    Mutant("TOL-BAYES-HALF", "verify/tolerances.py",
           original="    return cond_fwd + marg_fwd + 2.0 * torch.maximum(cond_bwd, marg_bwd)\n",
           replacement="    return cond_fwd + marg_fwd + torch.maximum(cond_bwd, marg_bwd)\n",
           description="Bayes-identity tolerance counts one autograd score instead of two",
           tests=(f"{GM}::test_bayes_identity_at_every_noise_level",
                  f"{HOLES}::test_bayes_identity_tolerance_counts_both_autograd_sums"),
           reason="survived the suite (a tighter bound still holds where errors are far below it); closed by "
                  "test_mutation_holes.py::test_bayes_identity_tolerance_counts_both_autograd_sums"),

    # --- verify/audit.py ----------------------------------------------------------------------------------------
    Mutant("AUD-TOL-TENFOLD", "verify/audit.py",
           original="ROUNDING_CHAIN = 18\n",
           replacement="ROUNDING_CHAIN = 180  # mutant: loosened tenfold\n",
           description="the audit's tolerance loosened tenfold",
           tests=AUDIT),
    Mutant("AUD-ALIAS-CHECK", "verify/audit.py",
           original=("        \"alias\": \"output shares storage with an input\" if _storage_ptr(out) in shared else "
                     "None,\n"),
           replacement="        \"alias\": None,  # mutant: check removed\n",
           description="the no-aliasing contract check removed",
           tests=AUDIT),
    Mutant("AUD-DTYPE-CHECK", "verify/audit.py",
           original="        \"dtype\": None if out.dtype == torch.float64 else f\"dtype {out.dtype}\",\n",
           replacement="        \"dtype\": None,  # mutant: check removed\n",
           description="the float64-output contract check removed",
           tests=AUDIT),
    Mutant("AUD-INPUT-COPY", "verify/audit.py",
           original="            given = tuple(t.clone() for t in pristine)\n",
           replacement="            given = pristine  # mutant: no copy\n",
           description="the combiner gets the audit's own inputs, not copies (in-place writes go unseen and spread)",
           tests=AUDIT),
    Mutant("AUD-REFERENCE-CONVENTION", "verify/audit.py",
           original="    return ps.eps_uncond + g * (ps.eps_cond - ps.eps_uncond)\n",
           replacement="    return ps.eps_cond + g * (ps.eps_cond - ps.eps_uncond)\n",
           description="reference eps_c + g (eps_c - eps_u): the guidance_scale read as Ho & Salimans' w",
           tests=AUDIT),

    # --- toy_models/neural/checkpoint.py ------------------------------------------------------------------------
    Mutant("CKP-HASH", "toy_models/neural/checkpoint.py",
           original="    if digest != card[\"sha256\"]:\n",
           replacement="    if False:  # mutant: hash check removed\n",
           description="the weights' SHA-256 check removed",
           tests=NEURAL),
    Mutant("CKP-SIGNATURE", "toy_models/neural/checkpoint.py",
           original="    _check_signature(card_path, card)\n",
           replacement="    pass  # mutant: signature not checked\n",
           description="the card's signature not checked on load",
           tests=NEURAL),
    Mutant("CKP-CANONICAL", "toy_models/neural/checkpoint.py",
           original=("    return json.dumps(value, sort_keys=True, separators=(\",\", \":\"), "
                     "ensure_ascii=True).encode(\"ascii\")\n"),
           replacement="    return json.dumps(value, separators=(\",\", \":\"), ensure_ascii=True).encode(\"ascii\")\n",
           description="canonical JSON without sorted keys (the signature depends on the field order)",
           tests=NEURAL),
    Mutant("CKP-FINITE-INF", "toy_models/neural/checkpoint.py",
           original="        finite = torch.isfinite(tensor)\n",
           replacement="        finite = ~torch.isnan(tensor)  # mutant: inf passes\n",
           description="non-finite weight check catches NaN only: infinite weights load",
           tests=NEURAL),
    Mutant("CKP-FLOAT-CAST", "toy_models/neural/checkpoint.py",
           original="lambda: NeuralDenoiser(network.float(), vocabulary, card[\"schedule\"], card[\"world\"]))",
           replacement="lambda: NeuralDenoiser(network, vocabulary, card[\"schedule\"], card[\"world\"]))",
           description="the float32 cast of a loaded network dropped (a float64 checkpoint stays float64)",
           tests=(*NEURAL, f"{HOLES}::test_loaded_network_is_float32_even_under_a_float64_default_dtype"),
           reason=("survived the suite; closed by "
                   "test_mutation_holes.py::test_loaded_network_is_float32_even_under_a_float64_default_dtype")),

    # --- toy_models/neural/training.py --------------------------------------------------------------------------
    Mutant("TRN-DROPOUT-RATE", "toy_models/neural/training.py",
           original="        drop = torch.rand(n, generator=generator) < self.p_uncond\n",
           replacement="        drop = torch.rand(n, generator=generator) > self.p_uncond\n",
           description="conditioning dropout with probability 1 - p_uncond",
           tests=NEURAL),
    Mutant("TRN-WARMUP-OFF-BY-ONE", "toy_models/neural/training.py",
           original="        return config.learning_rate * (step + 1) / config.warmup_steps\n",
           replacement="        return config.learning_rate * step / config.warmup_steps\n",
           description="warm-up off by one: the first step has learning rate 0",
           tests=(*NEURAL, f"{HOLES}::test_learning_rate_warm_up_starts_above_zero_and_reaches_the_peak"),
           reason=("survived the suite; closed by "
                   "test_mutation_holes.py::test_learning_rate_warm_up_starts_above_zero_and_reaches_the_peak")),
    Mutant("TRN-EMA-DECAY", "toy_models/neural/training.py",
           original="                    e.lerp_(p.detach(), 1 - decay)\n",
           replacement="                    e.lerp_(p.detach(), decay)\n",
           description="EMA update with decay and 1 - decay swapped",
           tests=(*NEURAL, f"{HOLES}::test_ema_warm_up_weights"),
           reason="survived the suite; closed by test_mutation_holes.py::test_ema_warm_up_weights"),
    Mutant("TRN-DATA-STD", "toy_models/neural/training.py",
           original="    second_moment = torch.diagonal(gm.covariance()).sum() + gm.mean().pow(2).sum()\n",
           replacement="    second_moment = torch.diagonal(gm.covariance()).sum()  # mutant: about the mean\n",
           description="data_std measured about the mean instead of about zero (mean term dropped)",
           tests=(*NEURAL, f"{HOLES}::test_data_std_is_the_rms_about_zero"),
           reason="survived the suite; closed by test_mutation_holes.py::test_data_std_is_the_rms_about_zero"),
]

#: files that were still being edited when their mutants were written: their mutants run last, so that a run
#: started while an owner is committing reaches them as late as possible (a changed snippet is reported stale)
LATE_FILES = ("verify/rules/_base.py", "verify/samplers.py", "verify/tilted.py", "verify/metrics.py",
              "verify/exact_law.py", "toy_models/parametrization.py")


# ----------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    id: str
    file: str
    description: str
    status: str  # killed, survived, timeout, stale, invalid, error
    seconds: float = 0.0
    detail: str = ""
    equivalent: bool = False


def _tracked_files(root: pathlib.Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    files = []
    for name in out.split("\0"):
        if not name or EXCLUDED_PARTS & set(pathlib.PurePosixPath(name).parts):
            continue
        if (root / name).is_file():  # tracked but deleted in the working tree: skip
            files.append(name)
    return files


def copy_tree(root: pathlib.Path, dest: pathlib.Path) -> None:
    """The working tree (tracked and untracked-not-ignored files, as they are now) copied into ``dest``."""
    for name in _tracked_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


#: a pytest plugin (loaded with ``-p``) that writes the id of every failed test, one per line, to the file named by
#: CFGTRUTH_MUTATION_FAILURES: test ids may contain spaces, so pytest's summary lines cannot be parsed reliably
_PLUGIN_NAME = "_cfgtruth_mutation_plugin"
_PLUGIN = """import os


def _record(report):
    if report.failed:
        with open(os.environ["CFGTRUTH_MUTATION_FAILURES"], "a", encoding="utf-8") as fh:
            fh.write(report.nodeid + "\\n")


pytest_runtest_logreport = _record
pytest_collectreport = _record
"""


def _env(copy: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(copy.parent / "plugin")])  # the copy first
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc: a mutant never imports another mutant's bytecode
    env["CFGTRUTH_HYPOTHESIS_PROFILE"] = "ci"  # derandomised examples: the same tests every run
    return env


def _install_plugin(tmp: pathlib.Path) -> None:
    (tmp / "plugin").mkdir(exist_ok=True)
    (tmp / "plugin" / f"{_PLUGIN_NAME}.py").write_text(_PLUGIN, encoding="utf-8")


def check_imports(copy: pathlib.Path) -> None:
    """Stop unless ``toy_models`` and ``verify`` import from ``copy`` (not the editable install)."""
    code = "import toy_models, verify; print(toy_models.__file__); print(verify.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=_env(copy), capture_output=True, text=True,
                         check=True).stdout.split()
    for path in out:
        if not pathlib.Path(path).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"mutation: {path} is imported instead of the copy in {copy}; the editable install "
                             "shadows PYTHONPATH, so mutants would not be tested")


def _run_pytest(copy: pathlib.Path, args: list[str], timeout: float
                ) -> tuple[int | None, str, float, list[str]]:
    """``(exit status or None on timeout, output, seconds, ids of the failed tests)`` of ``python -m pytest args``
    run in ``copy``."""
    start = time.perf_counter()
    fd, failures = tempfile.mkstemp(prefix="failures-", suffix=".txt", dir=copy.parent)
    os.close(fd)
    env = dict(_env(copy), CFGTRUTH_MUTATION_FAILURES=failures)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", _PLUGIN_NAME, *args], cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest process and anything it started
            out, _ = proc.communicate()
            rc = None
        failed = list(dict.fromkeys(pathlib.Path(failures).read_text(encoding="utf-8").splitlines()))
    finally:
        os.unlink(failures)
    return rc, out, time.perf_counter() - start, failed


def missing_tests(copy: pathlib.Path, targets: list[str], timeout: float) -> list[str]:
    """The targets (files or test ids) that pytest cannot find in ``copy`` (renamed or removed tests)."""
    missing: list[str] = []
    while True:
        rc, out, _, _ = _run_pytest(copy, ["-q", "-p", "no:cacheprovider", "--collect-only",
                                           *[t for t in targets if t not in missing]], timeout)
        found = []
        for line in out.splitlines():
            if line.startswith("ERROR: not found: "):
                path = line[len("ERROR: not found: "):].strip()
                found.append(str(pathlib.PurePosixPath(path).relative_to(copy)) if path.startswith(str(copy))
                             else path)
        if rc != 4 or not found:
            return missing
        missing += found


def baseline_failures(copy: pathlib.Path, targets: list[str], timeout: float) -> tuple[list[str], str]:
    """Test ids among ``targets`` that fail on the unmutated tree, and a one-line account of the run."""
    rc, out, secs, failing = _run_pytest(copy, ["-q", "-p", "no:cacheprovider", *targets], timeout)
    if rc is None:
        raise SystemExit(f"mutation: the baseline run took longer than {timeout:g} s")
    if rc not in (0, 1):
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise SystemExit(f"mutation: the baseline run could not run the tests (pytest exit {rc}):\n{tail}")
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    return failing, f"baseline: {summary} ({secs:.0f} s)"


def run_mutant(m: Mutant, copy: pathlib.Path, deselect: list[str], timeout: float,
               missing: frozenset[str] = frozenset()) -> Result:
    res = Result(m.id, m.file, m.description, "error", equivalent=m.equivalent)
    gone = [t for t in m.tests if t in missing]
    if gone:
        res.detail = f"test(s) not found (renamed or removed? update the mutant's tests): {gone}"
        return res
    path = copy / m.file
    source = path.read_bytes()
    text = source.decode("utf-8")
    count = text.count(m.original)
    if count != 1:
        res.status, res.detail = "stale", f"original snippet found {count} times in {m.file} (must be exactly once)"
        return res
    mutated = text.replace(m.original, m.replacement)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as err:
        res.status, res.detail = "invalid", f"the mutated file does not compile: {err}"
        return res
    args = ["-x", "-q", "-p", "no:cacheprovider", *m.tests]
    for test_id in deselect:
        args += ["--deselect", test_id]
    try:
        path.write_text(mutated, encoding="utf-8")
        rc, out, res.seconds, failed = _run_pytest(copy, args, timeout)
    finally:
        path.write_bytes(source)
    if rc is None:
        res.status, res.detail = "timeout", f"tests still running after {timeout:g} s (counted as killed)"
    elif rc == 0:
        res.status = "survived"
    elif rc in (1, 2):
        res.status = "killed"
        res.detail = f"by {failed[0]}" if failed else f"pytest exit {rc}"
    else:
        res.status = "error"
        res.detail = f"pytest exit {rc}: " + " | ".join(out.strip().splitlines()[-3:])
    return res


def select(patterns: list[str] | None) -> list[Mutant]:
    if not patterns:
        return list(MUTANTS)
    chosen = [m for m in MUTANTS if any(fnmatch.fnmatchcase(m.id, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(m.id, p) for m in MUTANTS)]
    if unknown:
        raise SystemExit(f"mutation: no mutant matches {unknown}; see --list")
    return chosen


def kill_rate(results: list[Result]) -> tuple[int, int, float | None]:
    counted = [r for r in results if not r.equivalent and r.status in ("killed", "timeout", "survived")]
    killed = sum(r.status in ("killed", "timeout") for r in counted)
    return killed, len(counted), (killed / len(counted) if counted else None)


def print_table(results: list[Result], stream=sys.stdout) -> None:
    w_id = max(len(r.id) for r in results)
    w_file = max(len(r.file) for r in results)
    print(f"{'id':<{w_id}}  {'file':<{w_file}}  {'result':<10} {'s':>5}  description / detail", file=stream)
    for r in results:
        status = r.status + (" (equivalent)" if r.equivalent else "")
        print(f"{r.id:<{w_id}}  {r.file:<{w_file}}  {status:<10} {r.seconds:5.0f}  {r.description}", file=stream)
        if r.detail:
            print(f"{'':<{w_id}}  {'':<{w_file}}  {'':<10} {'':>5}    {r.detail}", file=stream)


def _check_unique_ids() -> None:
    seen = set()
    for m in MUTANTS:
        if m.id in seen:
            raise SystemExit(f"mutation: duplicate mutant id {m.id}")
        if m.equivalent and not m.reason:
            raise SystemExit(f"mutation: {m.id} is marked equivalent without a reason")
        seen.add(m.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants (ids or fnmatch patterns)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--show", nargs="+", metavar="ID", help="print these mutants as diffs and exit")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant (default 180)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, one tree copy each (default 1)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run of the unmutated tree")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    _check_unique_ids()
    # files whose owners may still be editing them go last (stable order otherwise)
    chosen = sorted(select(args.only), key=lambda m: m.file in LATE_FILES)

    if args.list:
        for m in chosen:
            flag = f"  [equivalent: {m.reason}]" if m.equivalent else (f"\n    {m.reason}" if m.reason else "")
            print(f"{m.id}  {m.file}\n    {m.description}{flag}\n    tests: {' '.join(m.tests)}")
        print(f"{len(chosen)} mutants over {len({m.file for m in chosen})} files")
        return 0
    if args.show:
        for m in select(args.show):
            text = (REPO / m.file).read_text(encoding="utf-8")
            if text.count(m.original) != 1:
                print(f"{m.id}: stale ({text.count(m.original)} occurrences of the snippet in {m.file})")
                continue
            diff = difflib.unified_diff(text.splitlines(True), text.replace(m.original, m.replacement).splitlines(True),
                                        f"a/{m.file}", f"b/{m.file}", n=2)
            print(f"# {m.id}: {m.description}")
            sys.stdout.writelines(diff)
        return 0
    if args.jobs < 1:
        parser.error("--jobs: must be at least 1")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cfgtruth-mutation-") as tmp:
        _install_plugin(pathlib.Path(tmp))
        copies = []
        for j in range(min(args.jobs, len(chosen))):
            copy = pathlib.Path(tmp) / f"tree{j}"
            copy_tree(REPO, copy)
            check_imports(copy)
            copies.append(copy)
        print(f"mutation: {len(chosen)} mutants, {len(copies)} copy(ies) of {REPO} in {tmp}; the copy's modules "
              "are imported (checked)", flush=True)

        deselect: list[str] = []
        targets = list(dict.fromkeys(t for m in chosen for t in m.tests))
        missing = frozenset(missing_tests(copies[0], targets, timeout=max(600.0, args.timeout)))
        for test_id in sorted(missing):
            print(f"mutation: test not found (renamed or removed), its mutants are reported as errors: {test_id}",
                  flush=True)
        if not args.no_baseline:
            # a whole file given anywhere covers its test ids given elsewhere: run each test once
            files = {t for t in targets if "::" not in t}
            targets = [t for t in targets if t not in missing and (t.split("::")[0] not in files or "::" not in t)]
            deselect, line = baseline_failures(copies[0], targets, timeout=max(1800.0, args.timeout))
            print(f"mutation: {line}", flush=True)
            for test_id in deselect:
                print(f"mutation: fails without any mutant, deselected: {test_id}", flush=True)

        free = list(copies)
        lock = threading.Lock()

        def work(m: Mutant) -> Result:
            with lock:
                copy = free.pop()
            try:
                res = run_mutant(m, copy, deselect, args.timeout, missing)
            finally:
                with lock:
                    free.append(copy)
            mark = " (equivalent)" if m.equivalent else ""
            print(f"  {res.status:<9} {res.seconds:5.0f} s  {m.id}{mark}  {res.detail}", flush=True)
            return res

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(copies)) as pool:
            results = list(pool.map(work, chosen))

    elapsed = time.perf_counter() - started
    print()
    print_table(results)
    killed, counted, rate = kill_rate(results)
    by_status = {s: sum(r.status == s for r in results) for s in
                 ("killed", "timeout", "survived", "stale", "invalid", "error")}
    n_equiv = sum(r.equivalent for r in results)
    print()
    print("mutation: " + ", ".join(f"{n} {s}" for s, n in by_status.items() if n)
          + f"; {n_equiv} marked equivalent (not counted)")
    if rate is not None:
        print(f"mutation: kill rate {killed}/{counted} = {100 * rate:.1f} % of the non-equivalent mutants "
              f"(target >= 90 %); {elapsed / 60:.1f} min")
    for r in results:
        if r.status == "survived" and not r.equivalent:
            print(f"mutation: SURVIVED {r.id} ({r.file}): {r.description}")
    for m in chosen:
        if m.equivalent:
            print(f"mutation: equivalent {m.id}: {m.reason}")
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps({
            "results": [dataclasses.asdict(r) for r in results], "killed": killed, "counted": counted,
            "kill_rate": rate, "seconds": elapsed, "deselected_baseline_failures": deselect}, indent=1) + "\n")
    bad = any(r.status in ("stale", "invalid", "error") or (r.status == "survived" and not r.equivalent)
              for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
