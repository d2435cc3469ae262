"""Network figures: ``plot_network_all`` writes four valid PNGs from checkpoints trained here (a few dozen steps of
the ``small`` preset: the figures are checked for being drawn, not for what a good network shows), skips the
figures whose checkpoints are missing, and draws from results already measured without touching a network."""

from __future__ import annotations

import math
import shutil

import pytest

from toy_models.neural import config_from_preset, save_checkpoint, train
from toy_models.neural.training import card_facts
from verify.claims import RunConfig
from verify.claims._common import one_thread
from verify.claims.network import attention_mass, load_models, score_errors
from verify.figures_network import (
    NETWORK_FIGURES,
    dropout_ablation_rows,
    plot_dropout_ablation,
    plot_network_all,
    plot_network_attention,
    plot_network_score_error,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 30  # enough for finite predictions; the figures' content is not under test here
# Training and measuring run on one thread, as the figures do: these tensors are small, and on a busy 2-core machine
# a second thread made a 30-step training run 10x slower.


def _train_and_save(path, world: str, **overrides) -> None:
    result = train(config_from_preset(world, "small", steps=STEPS, warmup_steps=5, **overrides), show_progress=False)
    save_checkpoint(path, result.denoiser, card_facts(result, score_error={}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder laid out like checkpoints/: the three main networks and the five p_uncond ablation networks."""
    folder = tmp_path_factory.mktemp("checkpoints")
    with one_thread():
        for world in ("ring2d", "attributes2d", "tokens16d"):
            _train_and_save(folder / world, world)
        for p in ("0.00", "0.05", "0.10", "0.20", "0.50"):
            _train_and_save(folder / "ablation" / f"ring2d_p{p}", "ring2d", p_uncond=float(p))
    return folder


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path.name
    assert len(data) > 20_000, (path.name, len(data))


def test_plot_network_all_writes_every_png(checkpoints, tmp_path):
    out = tmp_path / "nested" / "figures"
    paths = plot_network_all(out, checkpoints=checkpoints, quick=True)
    assert [p.name for p in paths] == list(NETWORK_FIGURES)
    for path in paths:
        assert path.parent == out and path.is_file()
        _assert_png(path)


def test_missing_checkpoints_are_skipped_with_a_note(checkpoints, tmp_path, capsys):
    assert plot_network_all(tmp_path / "none", checkpoints=tmp_path / "empty", quick=True) == []
    printed = capsys.readouterr().out
    for name in NETWORK_FIGURES:
        assert f"{name}: skipped" in printed

    partial = tmp_path / "partial"  # ring2d alone: its score-error panel and the samples figure, nothing else
    partial.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(checkpoints / f"ring2d{suffix}", partial / f"ring2d{suffix}")
    paths = plot_network_all(tmp_path / "figs", checkpoints=partial, quick=True)
    assert [p.name for p in paths] == ["network_score_error.png", "network_cfg_samples.png"]
    printed = capsys.readouterr().out
    assert "network_attention.png: skipped" in printed and "network_dropout_ablation.png: skipped" in printed
    assert "drawn without attributes2d, tokens16d" in printed


def test_figures_draw_given_results_without_a_network(checkpoints, tmp_path):
    """The score-error, attention and ablation figures read measured results; no network needed to draw them."""
    config = RunConfig(quick=True, show_progress=False)
    models = load_models(checkpoints)
    with one_thread():
        tables = {"ring2d": score_errors(models["main"]["ring2d"], config)}
        attention = attention_mass(models["main"]["tokens16d"], config)
    rows = dropout_ablation_rows(models["ablation"], config)
    assert set(rows) == {"0.00", "0.05", "0.10", "0.20", "0.50"}
    for p, r in rows.items():  # what the figure prints is what its curves say (these 30-step networks show no
        #                        ordering by p_uncond yet: that is tested on the shipped ones, test_network_claims)
        null = r["null_by_t"]
        assert math.isclose(r["null_rms_relative_error"], math.sqrt(sum(v * v for v in null) / len(null)),
                            rel_tol=1e-12), p
        # the pooled CFG error is a size-weighted mean of the per-t squared errors, so it lies between their extremes
        assert min(r["cfg_by_t"]) <= r["cfg_eps_error"] <= max(r["cfg_by_t"]), p
        # every error bar resolves its value: a relative error measured on 256 points per cell has a relative SE of
        # order 1/sqrt(256) = 0.06 per cell, less once pooled; 0.25 leaves room for heavy-tailed cells
        assert 0 < r["null_se"] < 0.25 * r["null_rms_relative_error"], p
        assert 0 < r["cfg_eps_error_se"] < 0.25 * r["cfg_eps_error"], p
    empty = {"main": dict.fromkeys(models["main"]), "ablation": dict.fromkeys(models["ablation"]), "imperfect": None}
    _assert_png(plot_network_score_error(tmp_path / "score.png", empty, config, tables=tables))
    _assert_png(plot_network_attention(tmp_path / "attention.png", empty, config, attention=attention))
    _assert_png(plot_dropout_ablation(tmp_path / "ablation.png", empty, config, rows=rows))
