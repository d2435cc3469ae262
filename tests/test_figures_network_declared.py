"""Network figures: drawn from the providers' results (the records' own numbers and samples), with a note where
checkpoints are missing, and from exact-model stand-ins whose errors are known (so the drawing code is checked
without a trained network)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify.claims import RunConfig
from verify.evidence import Evidence
from verify.evidence import network as net
from verify.evidence.shared import PerturbedDenoiser, first_sampler_by_limit
from verify.figures import get_figure, plot
from verify.figures.network import draw_attention, draw_cfg_samples, draw_dropout_ablation, draw_score_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("network_score_error.png", "network_cfg_samples.png", "network_attention.png",
           "network_dropout_ablation.png")
QUICK = RunConfig(quick=True, show_progress=False)
CHECKPOINTS = net.default_checkpoints()


def _assert_png(path, min_bytes: int = 20_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path.name
    assert len(data) > min_bytes, (path.name, len(data))


def test_the_claims_name_these_figures():
    """Each figure is registered, and each record that draws on it names it."""
    from verify.claims import get_claim

    for name in FIGURES:
        assert get_figure(name).module == "verify.figures.network"
    assert get_claim("S0-NULL-TOKEN").figures == ("figures/network_score_error.png",)
    assert get_claim("S0-XATTN").figures == ("figures/network_attention.png", "figures/image_attention.png")
    assert get_claim("S1-DROPOUT").figures == ("figures/network_dropout_ablation.png",)


def test_every_network_figure_is_drawn_from_the_quick_evidence(quick_evidence, tmp_path):
    out = tmp_path / "nested" / "figures"
    paths = plot(FIGURES, out, quick_evidence)
    assert [p.name for p in paths] == list(FIGURES)
    for path in paths:
        assert path.parent == out
        _assert_png(path)


def test_the_samples_figure_draws_the_records_samples(quick_evidence):
    """The first panel's points are the network samples (inside the view) behind S0-PROP2-SAMPLES's network block,
    and the second row's those of the exact scores: the figure draws no samples of its own."""
    res = quick_evidence.get("network_cfg_sampling")
    view = quick_evidence.get("network_ring2d_view")
    fig = draw_cfg_samples(res, view)
    w = next(iter(res.by_w))
    pair = res.samples[w][first_sampler_by_limit()["ode"]]
    limits = first_sampler_by_limit()
    columns = len([s for w in res.by_w for s in (limits["ode"], limits["sde"]) if s in res.samples[w]])
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:2 * columns]
    lo = np.array([view.x1[0].item(), view.x2[0].item()])
    hi = np.array([view.x1[-1].item(), view.x2[-1].item()])
    for ax, samples in ((axes[0], pair.network), (axes[columns], pair.analytic)):
        x = samples.numpy()
        inside = x[((x >= lo) & (x <= hi)).all(1)]
        drawn = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) == len(inside)]
        assert any(np.array_equal(np.asarray(d), inside) for d in drawn)


def test_missing_checkpoints_are_drawn_as_a_note(tmp_path):
    """No checkpoint: each figure is one panel saying which are missing. ring2d alone: the score-error figure has
    its one panel and names the missing networks."""
    empty = Evidence(RunConfig(quick=True, show_progress=False, checkpoints=str(tmp_path / "empty")))
    for path in plot(FIGURES, tmp_path / "none", empty):
        _assert_png(path, min_bytes=5_000)
    fig = draw_score_error(empty.get("network_score_errors"))
    assert "no checkpoint for ring2d, attributes2d, tokens16d" in fig.axes[0].texts[0].get_text()

    partial = tmp_path / "partial"
    partial.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(CHECKPOINTS / f"ring2d{suffix}", partial / f"ring2d{suffix}")
    some = Evidence(RunConfig(quick=True, show_progress=False, checkpoints=str(partial)))
    errors = some.get("network_score_errors")
    assert set(errors.tables) == {"ring2d"} and "attributes2d, tokens16d" in errors.skipped
    fig = draw_score_error(errors)
    assert len(fig.axes) == 1 and "attributes2d, tokens16d" in fig.get_suptitle()


@pytest.fixture(scope="module")
def stand_ins():
    """Exact ring2d scores with a known injected relative error, standing in for ablation networks: the larger the
    injected error, the worse the 'network' (PerturbedDenoiser)."""
    exact = AnalyticDenoiser(get_world("ring2d"))
    return {"0.00": PerturbedDenoiser(exact, 0.20, seed=1), "0.10": PerturbedDenoiser(exact, 0.05, seed=2),
            "0.50": PerturbedDenoiser(exact, 0.01, seed=3)}


def test_dropout_rows_report_the_injected_errors_and_are_drawn(stand_ins, tmp_path):
    rows = net.dropout_rows(stand_ins, QUICK)
    assert list(rows) == list(stand_ins)
    for p, r in rows.items():  # what the figure prints is what its curves say
        null = r.null_by_t
        assert r.null_rms_relative_error == pytest.approx(np.sqrt(np.mean(np.square(null))), rel=1e-12), p
        # the pooled CFG error is a size-weighted mean of the per-t squared errors, so it lies between their extremes
        assert min(r.cfg_by_t) <= r.cfg_eps_error <= max(r.cfg_by_t), p
        # every error bar resolves its value: a relative error measured on 256 points per cell has a relative SE of
        # order 1/sqrt(256) = 0.06 per cell, less once pooled; 0.25 leaves room for heavy-tailed cells
        assert 0 < r.null_se < 0.25 * r.null_rms_relative_error, p
        assert 0 < r.cfg_eps_error_se < 0.25 * r.cfg_eps_error, p
    # injected errors 0.20 > 0.05 > 0.01 (a factor 4 and 5 apart): each step is many standard errors
    for worse, better in (("0.00", "0.10"), ("0.10", "0.50")):
        a, b = rows[worse], rows[better]
        assert a.null_rms_relative_error - b.null_rms_relative_error > net.Z * np.hypot(a.null_se, b.null_se)
        assert a.cfg_eps_error - b.cfg_eps_error > net.Z * np.hypot(a.cfg_eps_error_se, b.cfg_eps_error_se)
    fig = draw_dropout_ablation(net.Dropout(rows, {}))
    path = tmp_path / "ablation.png"
    fig.savefig(path, dpi=150)
    _assert_png(path)


def test_score_error_and_attention_figures_draw_given_results(stand_ins, tmp_path):
    """The score-error figure draws tables of any denoiser; the attention figure draws any maps (uniform ones here:
    chance level everywhere, no position's own token the argmax)."""
    tables = {"ring2d": net.score_errors(stand_ins["0.10"], QUICK)}
    fig = draw_score_error(net.ScoreErrors(tables, {}, {}))
    fig.savefig(tmp_path / "score.png", dpi=150)
    _assert_png(tmp_path / "score.png")
    uniform = torch.full((2, 16, 4), 0.25, dtype=torch.float64).tolist()
    at_t = net.AttentionAtTime(uniform, (0.25, 0.25), (0, 0), 0.25, 0, 0.25)
    fig = draw_attention(net.AttentionMass({"0.1": at_t, "0.9": at_t}, 8, 16))
    fig.savefig(tmp_path / "attention.png", dpi=150)
    _assert_png(tmp_path / "attention.png")
