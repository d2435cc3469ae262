"""The rule gallery: its provider (verify.evidence.rule_gallery) covers every registered rule from shared starting
points, with summaries that move the way the ledger says; its figure (verify.figures.rules) draws the provider's
result and is registered under the name the repository's figure has."""

from __future__ import annotations

import numpy as np
import pytest

from verify import rules
from verify.config import RunConfig
from verify.evidence.rule_gallery import RuleGallery, rule_gallery
from verify.figures import get_figure
from verify.figures.rules import draw_rule_gallery
from verify.figures.style import save


@pytest.fixture(scope="module")
def gallery() -> RuleGallery:
    # the quick provider: 400 starts, 20 DDIM steps; seed 3
    return rule_gallery(RunConfig(quick=True, seed=3, show_progress=False))


def test_one_entry_per_registered_rule(gallery):
    assert (gallery.n, gallery.steps) == (400, 20)
    assert set(gallery.entries) == {"unguided", *rules.names()}
    assert gallery.order[:2] == ["unguided", "cfg"] and sorted(gallery.order) == sorted(gallery.entries)
    for name, entry in gallery.entries.items():
        assert entry.samples.shape == (400, 2), name
        assert 0.0 <= entry.in_hdr99 <= 1.0 and entry.in_hdr99_se > 0, name
        assert np.isfinite([entry.overshoot, entry.overshoot_se, entry.spread_ratio]).all(), name


def test_summaries_move_as_the_ledger_says(gallery):
    """CFG at guidance_scale 6 overshoots the class mean (L-OVERSHOOT) and APG does not (L-APG): the gaps are many
    standard errors wide (paired starts; the bound uses the larger of the two standard errors, so it is conservative),
    a 5-sigma margin (false-alarm rate below 1e-6 if the effects were absent)."""
    e = gallery.entries
    cfg, apg, plain = e["cfg"], e["apg"], e["unguided"]
    assert cfg.overshoot - plain.overshoot > 5 * max(cfg.overshoot_se, plain.overshoot_se) * np.sqrt(2)
    assert cfg.overshoot - apg.overshoot > 5 * max(cfg.overshoot_se, apg.overshoot_se) * np.sqrt(2)
    assert cfg.spread_ratio < plain.spread_ratio


def test_the_figure_draws_the_provider(gallery, tmp_path):
    spec = get_figure("rule_gallery.png")
    assert spec.needs == ("rule_gallery",) and spec.path == "figures/rule_gallery.png"
    fig = draw_rule_gallery(gallery)
    assert len(fig.axes) == len(gallery.entries)
    path = save(fig, tmp_path / "gallery.png")
    assert path.exists() and path.stat().st_size > 10_000
