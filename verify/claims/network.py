r"""The claims only a trained network decides (evidence: :mod:`verify.evidence.network`).

* S0-NULL-TOKEN: is the null-token branch of a network trained with conditioning dropout as accurate as its
  conditional branches, and is dropout what makes it so?
* S0-XATTN: does each position of ``tokens16d`` attend most to the token that sets its block?
* S1-DROPOUT: is p_uncond in 0.1-0.2 effective, against 0, 0.05 and 0.5?
* S1-FID-IS: does CFG reach a Frechet distance to p(x|c) no worse than classifier guidance's, on an imperfect network?

Without their checkpoints these records stay pending and say which checkpoints are missing. Every comparison is
between two measured quantities and counts beyond :data:`~verify.evidence.network.Z` = 3 standard errors (one-sided
false-alarm rate 0.135 % each); the standard errors are Monte Carlo errors, not training-seed variation.
"""

from __future__ import annotations

import dataclasses
import math

from verify.evidence import to_json
from verify.evidence.image_attention import ImageAttention
from verify.evidence.network import (
    BAND,
    NULL_PAIR,
    STEPS,
    AblationTables,
    AttentionMass,
    Dropout,
    ImperfectQuality,
    ScoreErrors,
    Z,
)

from . import Decision, claim
from .sources import S0, S1

TESTS = "tests/test_network_claims_declared.py"


def _pending(decided_by: str, skipped: str, **extra) -> Decision:
    """A record that stays pending because a checkpoint is missing: what would decide it, and which is missing."""
    decision = Decision.pending(decided_by)
    return dataclasses.replace(decision, evidence={**decision.evidence,
                                                   "network": {"skipped": skipped, **to_json(extra)}})


NULL_TOKEN_DECIDED_BY = "the trained network's null-token branch against the exact unconditional score, by t"


@claim("S0-NULL-TOKEN", order=110, source=f"{S0}, 'Cross-Attention' section, last paragraph",
       statement="conditioning dropout with a null embedding (zero vector or learned null token) makes the "
                 "unconditional branch usable for CFG",
       tests=("tests/test_neural.py", f"{TESTS}::test_null_token_summary_follows_from_its_tables",
              f"{TESTS}::test_network_score_tables_agree_with_the_cards"),
       figure="figures/network_score_error.png")
def null_token(network_score_errors: ScoreErrors, ablation_null_pair: AblationTables) -> Decision:
    """Holds when every main network's null branch is within 3 SE of its worst conditional branch (rms over t) and
    the p_uncond = 0 network's null branch is worse than the p_uncond = 0.1 one's by more than 3 SE; conditional
    when dropout is needed but some null branch is worse than every conditional branch; fails when dropout is not
    needed."""
    errors = network_score_errors
    if errors.skipped:
        return _pending(NULL_TOKEN_DECIDED_BY, errors.skipped)
    summary = {}
    for w, table in errors.tables.items():
        null = table.rms("null")
        worst = max(table.rms(k) for k in table.conditional_keys)
        conditional = table.conditional_keys
        ratio_by_t = {f"{t:g}": n / sorted(table.by_condition[k][i] for k in conditional)[len(conditional) // 2]
                      for i, (t, n) in enumerate(zip(table.times, table.by_condition["null"], strict=True))}
        summary[w] = {"null_rms_relative_error": null[0], "null_se": null[1],
                      "conditional_rms_relative_error_max": worst[0], "conditional_max_se": worst[1],
                      "null_over_median_conditional_by_t": ratio_by_t,
                      "null_within_conditional_range": null[0] <= worst[0] + Z * math.hypot(null[1], worst[1])}
    if ablation_null_pair.skipped:
        return _pending(NULL_TOKEN_DECIDED_BY, ablation_null_pair.skipped, score_error_tables=errors.tables)
    by_p = {p: ablation_null_pair.tables[p].rms("null") for p in NULL_PAIR}
    no_dropout, usual = NULL_PAIR
    usable = all(v["null_within_conditional_range"] for v in summary.values())
    needed = by_p[no_dropout][0] - by_p[usual][0] > Z * math.hypot(by_p[no_dropout][1], by_p[usual][1])
    worst_world = max(summary, key=lambda w: summary[w]["null_rms_relative_error"])
    sw = summary[worst_world]
    hardest = {w: max(v["null_over_median_conditional_by_t"].items(), key=lambda kv: kv[1]) for w, v in summary.items()}
    return Decision(
        verdict="holds" if usable and needed else "conditional" if needed else "fails",
        headline=(f"null-branch rms error {sw['null_rms_relative_error']:.3f} against the worst conditional "
                  f"branch's {sw['conditional_rms_relative_error_max']:.3f} ({worst_world}, the largest of "
                  f"{len(summary)} networks); ring2d trained without dropout: {by_p[no_dropout][0]:.2f}"),
        procedure=("the trained networks' null-token branch against the exact unconditional score, by t (relative "
                   "sigma^2-weighted error), beside the conditional branches (rms over t, 3-SE comparisons); and the "
                   "null branch of ring2d networks trained with p_uncond = 0 and 0.1"),
        conditions=("" if usable else "the null branch is less accurate than every conditional branch: "
                    + "; ".join(f"{w}: {r:.1f}x the median conditional error at t = {t}"
                                for w, (t, r) in hardest.items())),
        uncertainty="Monte Carlo standard errors per (t, condition) in score_error_tables; one training seed",
        evidence={"network": {"score_error_tables": errors.tables, "summary": summary,
                              "ring2d_null_rms_error_by_p_uncond": {p: {"rms": v[0], "se": v[1]}
                                                                    for p, v in by_p.items()},
                              "checkpoints": errors.cards}},
    )


XATTN_DECIDED_BY = ("attention mass each position of tokens16d puts on the token controlling its block, in the "
                    "trained network")


@claim("S0-XATTN", order=112, source=f"{S0}, 'Cross-Attention' section",
       statement="with image features as queries and text tokens as keys/values, each position attends to the tokens "
                 "that describe it",
       tests=(f"{TESTS}::test_attention_summary_follows_from_the_maps",
              f"{TESTS}::test_attention_maps_are_probabilities"),
       figure=("figures/network_attention.png", "figures/image_attention.png"))
def cross_attention(network_attention: AttentionMass, image_attention: ImageAttention) -> Decision:
    """Descriptive: holds when, in its best layer, every position's largest attention mass is on its own block's
    token at every t; conditional when at least half of them are; fails otherwise. No threshold to set: the
    criterion is an argmax. The shapes16 network's maps over its patch grid (does each token's map follow the
    object? :mod:`verify.evidence.image_attention`) ride along as the ``images`` block and do not change the
    verdict."""
    att = network_attention
    images = image_attention.block()
    if att.skipped:
        return _pending(XATTN_DECIDED_BY, att.skipped).with_block("images", images)
    dim = att.dim
    best_layer = {t: max(v.positions_whose_argmax_is_controlling_by_layer) for t, v in att.by_t.items()}
    masses = {t: max(v.mass_on_controlling_token_by_layer) for t, v in att.by_t.items()}
    all_positions = all(v == dim for v in best_layer.values())
    some = all(v >= dim // 2 for v in best_layer.values())
    return Decision(
        verdict="holds" if all_positions else ("conditional" if some else "fails"),
        headline=("positions whose largest attention mass is on their block's token (best layer): "
                  + ", ".join(f"t={t}: {v}/{dim}" for t, v in best_layer.items())
                  + "; mass " + ", ".join(f"{m:.2f}" for m in masses.values()) + " (chance 0.25)"),
        procedure=("tokens16d network, full 4-token conditions (every label), points from p_t(x|c) at t = "
                   + ", ".join(att.by_t) + ": cross-attention probabilities averaged over heads and points, by "
                   "layer; a position attends to 'its' token when that token (the one that sets its block's sign) has "
                   "the largest mass"),
        conditions=("" if all_positions else "the network is free to route the condition through self-attention "
                    "between positions; attention maps show where it reads tokens, not what it uses"),
        uncertainty=f"{att.n} points per label and t; one training seed",
        evidence={"network": {"attention": att.by_t, "checkpoint": att.card},
                  "summary": {"positions_attending_most_to_their_token_best_layer": best_layer,
                              "mass_on_controlling_token_best_layer": masses}},
    ).with_block("images", images)


DROPOUT_DECIDED_BY = ("networks retrained with p_uncond in {0, 0.05, 0.1, 0.2, 0.5}: conditional and unconditional "
                      "score error and guided-sample quality")


@claim("S1-DROPOUT", order=202, source=f"{S1}, '학습 단계'", statement="p_uncond of 0.1 to 0.2 is effective",
       tests=(f"{TESTS}::test_dropout_ablation_orderings_with_their_standard_errors",),
       figure="figures/network_dropout_ablation.png")
def dropout(network_dropout: Dropout) -> Decision:
    """Holds when no rate outside the band 0.1-0.2 gives a CFG (w = 3) prediction error below the band's best by
    more than 3 SE of the difference; conditional otherwise (the rates that beat it are named)."""
    ev = network_dropout
    if ev.skipped:
        return _pending(DROPOUT_DECIDED_BY, ev.skipped)
    full = ev.rows
    rows = {p: {"null_rms_relative_error": r.null_rms_relative_error, "null_se": r.null_se,
                "conditional_rms_relative_error": r.conditional_rms_relative_error, "conditional_se": r.conditional_se,
                "pooled_relative_error": r.pooled_relative_error, "cfg_w3_eps_error": r.cfg_eps_error,
                "cfg_w3_eps_error_se": r.cfg_eps_error_se} for p, r in full.items()}
    best = min(full, key=lambda p: full[p].cfg_eps_error)
    band = min(BAND, key=lambda p: full[p].cfg_eps_error)
    # the band is "effective" when no rate outside it beats the band's best by more than Z standard errors
    beaten_by = [p for p in full if p not in BAND and full[band].cfg_eps_error - full[p].cfg_eps_error
                 > Z * math.hypot(full[band].cfg_eps_error_se, full[p].cfg_eps_error_se)]
    return Decision(
        verdict="holds" if not beaten_by else "conditional",
        headline=("CFG (w = 3) prediction error by p_uncond: "
                  + ", ".join(f"{float(p):g}: {r.cfg_eps_error:.3f}" for p, r in full.items())
                  + f"; null-branch error at p = 0: {full['0.00'].null_rms_relative_error:.2f}"),
        procedure=("five ring2d networks, identical but for p_uncond in {0, 0.05, 0.1, 0.2, 0.5}: null and "
                   "conditional score error by t, and the relative error of the CFG prediction at w = 3 against the "
                   "exact CFG prediction (what guided sampling integrates); 3-SE comparisons"),
        conditions=("" if not beaten_by else "p_uncond = " + ", ".join(f"{float(p):g}" for p in beaten_by)
                    + " gives a smaller CFG error than the 0.1-0.2 band on this world"),
        uncertainty=("Monte Carlo standard errors in evidence; one training seed per p_uncond, so seed-to-seed "
                     "variation of training is not in them"),
        evidence={"network": {"by_p_uncond": rows, "best_p_uncond_for_cfg": best, "band_beaten_by": beaten_by,
                              "checkpoints": ev.cards}},
    )


FID_IS_DECIDED_BY = "quality/diversity curves of CFG and classifier guidance on an imperfect network"


@claim("S1-FID-IS", order=212, source=f"{S1}, '논문의 주요 실험 결과'",
       statement="CFG reaches a trade-off equal to or better than classifier guidance's without a classifier",
       tests=(f"{TESTS}::test_fid_is_record_follows_from_its_curves",))
def fid_is(imperfect_quality: ImperfectQuality) -> Decision:
    """Holds when CFG's best Frechet distance to p(x|c) is no more than 3 SE (of the difference) above classifier
    guidance's best; fails otherwise."""
    q = imperfect_quality
    if q.skipped:
        return _pending(FID_IS_DECIDED_BY, q.skipped)
    (g_cfg, fd_cfg, se_cfg), (g_cg, fd_cg, se_cg) = q.best("cfg"), q.best("classifier")
    cfg_not_worse = fd_cfg <= fd_cg + Z * math.hypot(se_cfg, se_cg)
    scales = ", ".join(q.cfg)
    return Decision(
        verdict="holds" if cfg_not_worse else "fails",
        headline=(f"imperfect network: best Frechet to p(x|c) CFG {fd_cfg:.3f} (g = {g_cfg}) vs classifier guidance "
                  f"{fd_cg:.3f} (s = {g_cg}); precision at g = 1 / 4: {q.cfg['1'].precision:.2f} / "
                  f"{q.cfg['4'].precision:.2f}"),
        procedure=("a deliberately short-trained ring2d network (its pooled score error in evidence): DDIM "
                   f"({STEPS} steps) samples of class 0 under CFG (guidance_scale {scales}) and under classifier "
                   f"guidance with the exact noisy classifier on the network's null branch (scale {scales}); "
                   "precision against p(x|c) from exact densities, Frechet distance to p(x|c), mean p(c|x)"),
        conditions=("on a toy world with the exact noisy classifier as the competitor: the classifier here is "
                    "perfect, so CFG has to match an exact classifier with its own implicit one"),
        uncertainty=(f"binomial precision SEs; Frechet SEs from 100 bootstrap resamples (in evidence); a comparison "
                     f"counts beyond {Z:g} SE"),
        evidence={"network": {"curves": {"cfg": q.cfg, "classifier": q.classifier, "score_error": q.score_error},
                              "best_cfg": {"guidance_scale": g_cfg, "frechet": fd_cfg},
                              "best_classifier": {"scale": g_cg, "frechet": fd_cg}, "checkpoint": q.card}},
    )
