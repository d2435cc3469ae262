r"""What guided samplers actually produce, against what the source texts and the literature say they produce.

* S0-PROP2-SAMPLES: does a sampler following the CFG score reach :math:`p(x|c)^{1+w}p(x)^{-w}`?
* L-DDIM-DDPM: do the ODE (DDIM) and the SDE (DDPM) produce different laws, neither the target?
* L-OVERSHOOT: does guidance push samples past the class, away from the other classes?
* S0-QUALITY-DIVERSITY: does raising w trade diversity for quality?
* S0-THRESHOLDING and S1-SCALE-TABLE: where do x0-predictions leave the data range as the scale grows?
* L-INTERVAL: does guidance limited to middle noise levels keep quality and recover diversity?

Evidence: :mod:`verify.evidence.laws`, :mod:`verify.evidence.quality`, :mod:`verify.evidence.thresholding`,
:mod:`verify.evidence.interval`. Each decision function composes its record from the exact and sampled laws of an
exact model; a trained network's laws enter as one more parameter of the decision functions that read them.
"""

from __future__ import annotations

from verify.evidence.image_guidance import ImageGuidance, image_block
from verify.evidence.interval import IntervalGuidance, IntervalRow
from verify.evidence.laws import (
    W_LAWS,
    CFGLaws1D,
    DiscreteLaws,
    Moments,
    MonteCarlo1D,
    OvershootRow,
    RingReference,
)
from verify.evidence.network import CFGSampling, NetworkQuality
from verify.evidence.quality import QualityDiversity
from verify.evidence.thresholding import Thresholding
from verify.evidence.tilted_samplers import TiltedSamplers

from . import Decision, claim
from .sources import S0, S1

GUIDED_WS = tuple(w for w in W_LAWS if w != "0")
OVERSHOOT_WS = ("0", "1", "3", "7")
#: a difference between two deterministic references counts when it exceeds this many times the larger error
#: estimate (each estimate bounds its reference's discretisation error from above: halving, docs/tolerances.md)
SEPARATION = 10.0
#: the floor of the error estimates, for laws exact to rounding (moment ODEs at rtol 1e-12, closed forms)
ERROR_FLOOR = 1e-6
TESTS = "tests/test_sampling_claims_declared.py"


def differs(a: Moments, b: Moments, key: str = "mean") -> bool:
    """True when two laws' ``key`` differ by more than :data:`SEPARATION` times the larger error estimate (and
    :data:`ERROR_FLOOR`)."""
    err = max((a.error or {}).get(key, 0.0), (b.error or {}).get(key, 0.0), ERROR_FLOOR)
    return abs(getattr(a, key) - getattr(b, key)) > SEPARATION * err


def _laws_json(laws: CFGLaws1D) -> dict:
    """``{kind: {w: {mean, var, mass_below_0[, error, method]}}}``: the exact laws without empty fields."""
    return {kind: {w: {k: v for k, v in vars(m).items() if v not in (None, "")} for w, m in by_w.items()}
            for kind, by_w in laws.laws.items()}


def _mismatch(worlds: tuple[CFGLaws1D, ...]) -> dict[str, dict[str, dict[str, bool]]]:
    """``{world: {w: {kind: law differs from the tilted target}}}`` for every guided w."""
    return {lw.world: {w: {k: differs(lw.law(k, w), lw.law("tilted", w)) for k in ("ode", "sde")} for w in GUIDED_WS}
            for lw in worlds}


def _zero_is_the_conditional(worlds: tuple[CFGLaws1D, ...]) -> bool:
    """At w = 0 the ODE's and SDE's laws agree with the tilted target (there, p(x|c)) within their errors."""
    return all(not differs(lw.law(k, "0"), lw.law("tilted", "0")) for lw in worlds for k in ("ode", "sde"))


def _exact_sampler_json(ts: TiltedSamplers) -> dict:
    """``{world: {w: {mean, var, se_mean, se_var, target_t_end, z}}}``: the exact sampler of the tilted target (its
    first coordinate; L-TILTED-EXACT's evidence) beside the CFG laws."""
    out: dict = {}
    for world, by_w in ts.exact.items():
        out[world] = {}
        for w, case in by_w.items():
            target = ts.target[world][w]
            out[world][w] = {"mean": case.mean[0], "se_mean": case.se_mean[0], "var": case.var[0],
                             "se_var": case.se_var[0], "target_t_end": {"mean": target.mean_t_end,
                                                                        "var": target.var_t_end},
                             "z_mean": case.z["mean[0]"], "z_var": case.z["var[0]"], "ks_pvalue": case.ks_pvalue}
    return out


@claim("S0-PROP2-SAMPLES", order=116, source=f"{S0}, 명제 2 (Proposition 2), proof",
       statement="the trajectory following the augmented score converges to p(x|c)^(1+w) p(x)^(-w)",
       tests=("tests/test_exact_law.py", TESTS,
              "tests/test_tilted_claims.py::test_prop2_samples_shows_the_exact_sampler"),
       figure=("figures/cfg_law_vs_tilted.png", "figures/network_cfg_samples.png", "figures/tilted_samplers.png"))
def prop2_samples(gauss1d_laws: CFGLaws1D, bimodal1d_laws: CFGLaws1D,
                  network_cfg_sampling_by_limit: CFGSampling, tilted_samplers: TiltedSamplers) -> Decision:
    """Fails when, for every w > 0, neither the ODE's nor the SDE's law is the tilted target (beyond 10x their
    error estimates) while at w = 0 all three agree; conditional otherwise. (That discrete samplers reach these
    continuous-time laws, not the target, is L-DDIM-DDPM's evidence.) The exact sampler of the target (DDPM on the
    score of the noised target, L-TILTED-EXACT) is shown beside them as the reference that does reach it; it does
    not enter the verdict, which is about the augmented score's trajectory."""
    worlds = (gauss1d_laws, bimodal1d_laws)
    mismatch = _mismatch(worlds)
    all_mismatch = all(v for world in mismatch.values() for row in world.values() for v in row.values())
    at_zero_ok = _zero_is_the_conditional(worlds)
    g = gauss1d_laws
    exact3 = tilted_samplers.exact["gauss1d"]["3"]
    decision = Decision(
        verdict="fails" if all_mismatch and at_zero_ok else "conditional",
        headline=(f"gauss1d w = 3: ODE N({g.law('ode', '3').mean:.3g}, {g.law('ode', '3').var:.3g}), SDE "
                  f"N({g.law('sde', '3').mean:.3g}, {g.law('sde', '3').var:.3g}), tilted "
                  f"N({g.law('tilted', '3').mean:.3g}, {g.law('tilted', '3').var:.3g}); exact sampler of the "
                  f"target N({exact3.mean[0]:.3f}, {exact3.var[0]:.3f})"),
        procedure=("continuous-time guided PF-ODE and reverse SDE on vp-linear from t = 1 (noised conditional) to 0: "
                   "gauss1d by the moment ODEs, bimodal1d by the flow map and a Fokker-Planck solve (error estimates "
                   "by halving), each against the tilted target (closed form, quadrature); a law differs when its "
                   f"mean does by more than {SEPARATION:g}x the larger error estimate; beside them, the exact "
                   "sampler of the target (DDPM on the score of the noised target, Richardson-extrapolated, "
                   "L-TILTED-EXACT) on gauss1d, bimodal1d and ring2d"),
        conditions=("holds only at w = 0; for w > 0 neither the ODE nor the SDE law is the tilted target (the guided "
                    "score at time t is that of tilted noised laws, which are not the noising of one tilted law); a "
                    "sampler driven by the score of the noised target itself does reach it (evidence: "
                    "exact_sampler)"),
        evidence={"laws": {lw.world: _laws_json(lw) for lw in worlds}, "differs_from_tilted": mismatch,
                  "w_zero_is_the_conditional": at_zero_ok,
                  "exact_sampler": _exact_sampler_json(tilted_samplers),
                  "see_also": {"L-DDIM-DDPM": "every discrete sampler's exact law on gauss1d, Monte Carlo of every "
                                              "sampler on bimodal1d, ring2d fine-step references",
                               "S0-WINF": "the bimodal1d ODE law at w = 15 and 30",
                               "L-TILTED-EXACT": "the exact sampler's tests against the target",
                               "L-FKC-EXACT, L-BN-LANGEVIN": "corrected samplers of the target"}},
        uncertainty=("deterministic references with halving error estimates (in evidence); the exact sampler's "
                     "Monte Carlo standard errors"))
    return decision.with_block("network", network_cfg_sampling_by_limit.block())


@claim("L-DDIM-DDPM", order=300, source="Bradley & Nakkiran 2024, 'Classifier-Free Guidance is a Predictor-Corrector'",
       statement="CFG with DDIM (ODE) and with DDPM (SDE) produce different laws, neither of them the tilted target",
       tests=("tests/test_exact_law.py", "tests/test_samplers.py", TESTS), figure="figures/cfg_law_vs_tilted.png")
def ddim_ddpm(gauss1d_laws: CFGLaws1D, bimodal1d_laws: CFGLaws1D, gauss1d_discrete_laws: DiscreteLaws,
              bimodal1d_monte_carlo: MonteCarlo1D, ring2d_fine_step_reference: RingReference,
              network_cfg_sampling: CFGSampling) -> Decision:
    """Holds when, for every w > 0 on both 1-D worlds, the ODE's law differs from the SDE's and neither is the
    tilted target (each difference beyond 10x the error estimates); fails otherwise. The discrete samplers' exact
    laws, the Monte Carlo z-scores and the ring2d references show which of the two limits each sampler reaches."""
    worlds = (gauss1d_laws, bimodal1d_laws)
    mismatch = _mismatch(worlds)
    all_mismatch = all(v for world in mismatch.values() for row in world.values() for v in row.values())
    ode_vs_sde = {lw.world: {w: differs(lw.law("ode", w), lw.law("sde", w)) for w in GUIDED_WS} for lw in worlds}
    differ = all(v for world in ode_vs_sde.values() for v in world.values())
    ring, mc = ring2d_fine_step_reference, bimodal1d_monte_carlo
    decision = Decision(
        verdict="holds" if differ and all_mismatch else "fails",
        headline="ODE (DDIM) and SDE (DDPM) laws differ from each other and from the tilted target for every w > 0",
        procedure=("the continuous-time laws of S0-PROP2-SAMPLES compared pairwise (difference > "
                   f"{SEPARATION:g}x the error estimates); every discrete sampler's exact law on gauss1d at 25 and "
                   f"100 steps; Monte Carlo of every sampler on bimodal1d at w = {mc.w} ({mc.n} samples, {mc.steps} "
                   "steps) with z-scores against the reference of its limit and against the tilted target; on ring2d "
                   f"(class 0, w = 3) fine-step ODE and SDE references ({ring.steps} steps, error against "
                   f"{ring.steps // 2}) with 100 steps of DDIM and DDPM against them"),
        evidence={"ode_differs_from_sde": ode_vs_sde, "differs_from_tilted": mismatch,
                  "see": "S0-PROP2-SAMPLES for the 1-D laws", "gauss1d_discrete_samplers": gauss1d_discrete_laws.laws,
                  f"bimodal1d_monte_carlo_w{mc.w}_{mc.steps}_steps": mc.samplers,
                  "ring2d_w3_fine_step_references": {**ring.limits, "tilted": {
                      "mean": ring.tilted_mean, "cov": ring.tilted_cov, "method": ring.tilted_method}}},
        uncertainty=("deterministic references; Monte Carlo z-scores; ring2d: measured solver errors and standard "
                     "errors in evidence"))
    return decision.with_block("network", network_cfg_sampling.block())


@claim("L-OVERSHOOT", order=302,
       source="Chidambaram et al. 2024, 'What does guidance do? A fine-grained analysis in a simple setting'",
       statement="guidance pushes samples away from the other classes, towards the extremes of the class's support",
       tests=(f"{TESTS}::test_sampling_verdicts_follow_from_the_evidence",
              "tests/test_figures_laws.py::test_trajectories_are_the_provider_paths"),
       figure="figures/trajectories_ring2d.png")
def overshoot(bimodal1d_laws: CFGLaws1D, ring2d_overshoot: tuple[OvershootRow, ...]) -> Decision:
    """Holds when bimodal1d's ODE and SDE means grow with w, the ODE's mean passes 2.5 at w = 7 (class mean 2),
    and ring2d's DDIM mean along the class direction passes 3 (the class mean) at w = 7; fails otherwise."""
    bm = {w: {k: bimodal1d_laws.law(k, w).mean for k in ("ode", "sde", "tilted")} for w in W_LAWS}
    grows = all(bm[b]["ode"] > bm[a]["ode"] and bm[b]["sde"] > bm[a]["sde"]
                for a, b in zip(W_LAWS, W_LAWS[1:], strict=False))
    rows = {r.sampler: {} for r in ring2d_overshoot}
    for r in ring2d_overshoot:
        rows[r.sampler][r.w] = {"mean_along_class_direction": r.mean_along_class_direction, "se": r.se,
                                "mean_posterior_of_class_0": r.mean_posterior_of_class_0}
    ode_sampler = next(iter(rows))  # DDIM: the first registered sampler whose limit is the probability-flow ODE
    ring = [rows[ode_sampler][w]["mean_along_class_direction"] for w in OVERSHOOT_WS]
    return Decision(
        verdict="holds" if grows and bm["7"]["ode"] > 2.5 and ring[-1] > 3.0 else "fails",
        headline=(f"bimodal1d ODE mean {bm['1']['ode']:.2f}, {bm['3']['ode']:.2f}, {bm['7']['ode']:.2f} at "
                  f"w = 1, 3, 7 (class mean 2); ring2d DDIM {ring[0]:.2f} -> {ring[-1]:.2f} (class mean 3)"),
        procedure=("bimodal1d class 1: means of the ODE and SDE laws by w against the class mean 2; ring2d class 0: "
                   "DDIM and DDPM samples (100 steps), mean along the class direction against the class mean 3"),
        evidence={"bimodal1d_means_by_w": bm, "class_mean": 2.0, "ring2d": rows},
        uncertainty="deterministic references; ring2d standard errors in evidence")


@claim("S0-QUALITY-DIVERSITY", order=122, source=f"{S0}, '트레이드오프 요약', first bullet",
       statement="raising w improves FID (quality) and lowers recall (diversity)",
       tests=(f"{TESTS}::test_sampling_verdicts_follow_from_the_evidence",
              "tests/test_figures_laws.py::test_quality_diversity_at_w0_and_its_trade_off"),
       figure="figures/quality_diversity.png")
def quality_diversity(quality_diversity: QualityDiversity, ring2d_overshoot: tuple[OvershootRow, ...],
                      network_quality: NetworkQuality) -> Decision:
    """Conditional when recall falls with w (exact laws on gauss1d) while the classifier confidence p(c|x) of
    ring2d's DDIM samples rises; fails otherwise."""
    qd = quality_diversity
    ex = qd.gauss1d
    ws = list(ex)
    pairs = list(zip(ws, ws[1:], strict=False))
    # 1e-3: the precision and recall of exact laws are averages over 20000 reference draws (binomial SE <= 0.0016)
    # with thresholds from the same draws, so a flat stretch can wobble by a few 1e-4
    prec_down = all(ex[b][k].precision <= ex[a][k].precision + 1e-3 for a, b in pairs for k in ("ode", "sde"))
    rec_down = all(ex[b][k].recall <= ex[a][k].recall + 1e-3 for a, b in pairs for k in ("ode", "sde"))
    ode_sampler = qd.samples.samplers[0]  # DDIM
    fd = {w: {"precision": q.precision, "frechet_to_p(x|c)": q.frechet_to_p_x_given_c,
              "generalised_variance_ratio": q.generalised_variance_ratio} for w, q in qd.ring2d[ode_sampler].items()}
    fd_ws = list(fd)
    fid_worse = all(fd[b]["frechet_to_p(x|c)"] > fd[a]["frechet_to_p(x|c)"]
                    for a, b in zip(fd_ws, fd_ws[1:], strict=False))
    confidence = [r.mean_posterior_of_class_0 for w in fd_ws for r in ring2d_overshoot
                  if r.sampler == ode_sampler and r.w == w]
    confidence_up = all(c > confidence[0] for c in confidence[1:])  # guided samples are more confidently class c
    gauss = {w: {k: {"precision": v.precision, "recall": v.recall, "frechet_to_p(x|c)": v.frechet_to_p_x_given_c}
                 for k, v in row.items()} for w, row in ex.items()}
    decision = Decision(
        verdict="conditional" if rec_down and confidence_up else "fails",
        headline=(f"w 0 -> 7: gauss1d ODE recall {ex['0']['ode'].recall:.2f} -> {ex['7']['ode'].recall:.2f} and "
                  f"precision {ex['0']['ode'].precision:.2f} -> {ex['7']['ode'].precision:.2f}; ring2d p(c|x) "
                  f"{confidence[0]:.3f} -> {confidence[-1]:.3f}, Frechet {fd['0']['frechet_to_p(x|c)']:.3f} -> "
                  f"{fd['7']['frechet_to_p(x|c)']:.3f}"),
        procedure=("precision and recall against p(x|c) from exact densities (highest-density regions at level "
                   f"{qd.level:g}) of the exact ODE/SDE laws on gauss1d; precision, Frechet distance to p(x|c) and "
                   f"the mean posterior p(c|x) of DDIM samples on ring2d ({qd.samples.n} samples, "
                   f"{qd.samples.steps} steps from the noised conditional)"),
        conditions=("diversity falls (recall) and classifier confidence p(c|x) rises with w, so the trade-off holds "
                    "if 'quality' means confidence; but against p(x|c) itself an exact model's precision falls and "
                    "its Frechet distance grows with w: 'FID improves' is not a property of guidance with an exact "
                    "model; whether it holds for an imperfect model is S1-FID-IS"),
        evidence={"gauss1d_exact_laws": gauss, f"ring2d_{ode_sampler}_{qd.samples.steps}_steps": fd,
                  "precision_decreases": prec_down, "recall_decreases": rec_down, "frechet_grows_with_w": fid_worse,
                  "ring2d_classifier_confidence_by_w": dict(zip(fd_ws, confidence, strict=True))},
        uncertainty="exact laws; precision/recall thresholds from 20000 reference draws (binomial SE ~ 0.002)")
    return decision.with_block("network", network_quality.block_for("S0-QUALITY-DIVERSITY"))


@claim("S0-THRESHOLDING", order=124, source=f"{S0}, '트레이드오프 요약', third bullet",
       statement="for w > 10 values leave the training range; Imagen's dynamic thresholding is recommended",
       tests=(f"{TESTS}::test_sampling_verdicts_follow_from_the_evidence",
              f"{TESTS}::test_x0_range_measured_by_the_callback_is_the_measurement_at_the_state_stepped_from"))
def thresholding(thresholding: Thresholding, image_guidance: ImageGuidance) -> Decision:
    """Holds when x0-predictions leave the data range at w = 15 (more than 1 % of them) and more so at w = 20 than
    at w = 1; conditional when they also leave it already at w = 1 or 3 (so not only 'for w > 10'); fails
    otherwise."""
    thr = thresholding
    leaves = thr.fraction("15") > 0.01
    grows = thr.fraction("20") > thr.fraction("1")
    early = thr.fraction("1") > 0.01 or thr.fraction("3") > 0.01
    decision = Decision(
        verdict="conditional" if leaves and grows and early else ("holds" if leaves and grows else "fails"),
        headline=(f"x0-predictions out of range: {thr.fraction('0'):.3f} at w = 0, {thr.fraction('1'):.3f} at "
                  f"w = 1, {thr.fraction('15'):.3f} at w = 15"),
        procedure=(f"ring2d class 0, DDIM {thr.steps} steps: fraction of guided x0-predictions outside the central "
                   "99.9 % range of the data, by w; dynamic thresholding (percentile 0.995) at w = 15 against none"),
        conditions=(("x0-predictions leave the data range long before w = 10: at high noise the guided x0 is "
                     "x0(null) + g (x0(c) - x0(null)), an extrapolation by g; " if early else "")
                    + "dynamic thresholding changes the sampled law (evidence: Frechet distance with and without), "
                    "so it trades one bias for another"),
        evidence={"data_range": thr.data_range, "x0_out_of_range_by_w": thr.x0_out_of_range_by_w,
                  "dynamic_thresholding_w15": thr.dynamic_thresholding_w15, "paths": thr.n},
        uncertainty="Monte Carlo over the sampled paths (binomial)")
    return decision.with_block("images", image_block(image_guidance, "S0-THRESHOLDING"))


@claim("S1-SCALE-TABLE", order=208, source=f"{S1}, 'Guidance Scale에 따른 변화' table",
       statement=("scale 0: unconditional; 1: the training distribution as is; 3-5 balance; 7-15 strong adherence; "
                  "20+ oversaturation and artifacts"),
       tests=(TESTS, "tests/test_exact_law.py"))
def scale_table(thresholding: Thresholding, gauss1d_discrete_laws: DiscreteLaws,
                gauss1d_discrete_laws_unguided: DiscreteLaws, network_quality: NetworkQuality,
                image_guidance: ImageGuidance) -> Decision:
    """Conditional: scales 0 and 1 are exact for an exact model (S1-CFG-FORM), but only a converged sampler
    reproduces the training law at scale 1, and the out-of-range fraction grows with the scale without a
    threshold."""
    at_scale_1 = {n: gauss1d_discrete_laws_unguided.relative_variance_error("0", n, 0.5)
                  for n in gauss1d_discrete_laws_unguided.steps}
    worst = {n: max(abs(v) for v in errors.values()) for n, errors in at_scale_1.items()}
    coarse, fine = min(worst), max(worst)
    decision = Decision(
        verdict="conditional",
        headline="0 and 1 exact for an exact model; out-of-range x0 grows with the scale (no 'artifacts' threshold)",
        procedure=("the S0-THRESHOLDING measurements by guidance_scale = 1 + w; S1-CFG-FORM for scales 0 and 1; "
                   "every sampler's exact discrete law on gauss1d at scale 1 (w = 0) against p(x|c) = N(1, 0.5)"),
        conditions=("scale 1 'samples the training distribution as is' only for an exact model and a converged "
                    f"sampler (at scale 1, {coarse}-step samplers miss the variance of p(x|c) by up to "
                    f"{100 * worst[coarse]:.0f} %, {fine}-step ones by up to {100 * worst[fine]:.0f} %, evidence); "
                    "the 3-5 / 7-15 / 20+ bands are qualitative and have no counterpart in a law"),
        evidence={"x0_out_of_range_by_scale": {f"{1 + float(w):g}": v for w, v in
                                               thresholding.x0_out_of_range_by_w.items()},
                  "scale_0_and_1_exact": "S1-CFG-FORM (bitwise)",
                  "gauss1d_scale_1_relative_variance_error": {str(n): e for n, e in at_scale_1.items()},
                  "gauss1d_discrete_samplers": gauss1d_discrete_laws.laws},
        uncertainty="see S0-THRESHOLDING; discrete laws exact (no sampling)")
    return decision.with_block("network", network_quality.block_for("S1-SCALE-TABLE")).with_block(
        "images", image_block(image_guidance, "S1-SCALE-TABLE"))


def _interval_json(row: IntervalRow) -> dict:
    return {"precision": row.precision, "frechet_to_p(x|c)": row.frechet_to_p_x_given_c,
            "generalised_variance_ratio": row.generalised_variance_ratio}


@claim("L-INTERVAL", order=304,
       source=("Kynkaanniemi et al. 2024, 'Applying guidance in a limited interval improves sample and distribution "
               "quality'"),
       statement="guidance applied only at middle noise levels keeps quality and recovers diversity",
       tests=(f"{TESTS}::test_interval_in_edm_noise_level_selects_the_steps_of_the_sigma_t_interval",
              f"{TESTS}::test_sampling_verdicts_follow_from_the_evidence"))
def interval(interval_guidance: IntervalGuidance) -> Decision:
    """Holds when guidance limited to the interval is closer to p(x|c) (Frechet) than full guidance and its
    precision is no lower than the unguided one's; fails otherwise."""
    ig = interval_guidance
    full, limited, plain = ig.full, ig.interval, ig.unguided
    better = (limited.frechet_to_p_x_given_c < full.frechet_to_p_x_given_c and limited.precision >= plain.precision)
    lo, hi = ig.sigma_over_alpha
    return Decision(
        verdict="holds" if better else "fails",
        headline=(f"Frechet to p(x|c): full {full.frechet_to_p_x_given_c:.3f}, interval "
                  f"{limited.frechet_to_p_x_given_c:.3f}; precision {plain.precision:.3f} / {full.precision:.3f} / "
                  f"{limited.precision:.3f} (none / full / interval)"),
        procedure=(f"ring2d class 0, DDIM {ig.steps} steps: unguided, full w = {ig.w:g}, and w = {ig.w:g} only for "
                   f"noise levels sigma/alpha in ({lo:.4g}, {hi:.4g}] (verify.rules' interval rule, in the paper's "
                   f"EDM noise level; this is vp-linear's sigma_t in [{ig.sigma_t[0]:g}, {ig.sigma_t[1]:g}], "
                   "converted by sigma_t / sqrt(1 - sigma_t^2)); precision (exact densities), Frechet distance to "
                   "p(x|c), covariance volume"),
        evidence={"ring2d_class0_ddim_100_steps": {"unguided": _interval_json(plain), "full": _interval_json(full),
                                                   "interval": _interval_json(limited)},
                  "w": ig.w, "sigma_over_alpha_interval": [lo, hi], "sigma_t_interval": list(ig.sigma_t)},
        uncertainty=f"Monte Carlo ({ig.n} samples)")
