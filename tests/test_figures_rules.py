"""verify.figures_rules: the gallery's data provider covers every registered rule, from shared starting points, with
summaries that move the way the ledger says; the figure is written."""

from __future__ import annotations

import numpy as np
import pytest

from verify import rules
from verify.figures_rules import plot_rule_gallery, rule_gallery


@pytest.fixture(scope="module")
def gallery():
    return rule_gallery(n=400, steps=20, seed=3)


def test_one_entry_per_registered_rule(gallery):
    assert set(gallery) == {"unguided", *rules.names()}
    for name, entry in gallery.items():
        assert entry["samples"].shape == (400, 2), name
        frac, se = entry["in_hdr99"]
        assert 0.0 <= frac <= 1.0 and se > 0 and np.isfinite(entry["overshoot"]).all()


def test_summaries_move_as_the_ledger_says(gallery):
    """CFG at guidance_scale 6 overshoots the class mean (L-OVERSHOOT) and APG does not (L-APG): the gaps are many
    standard errors wide (paired starts; the bound uses the larger of the two standard errors, so it is conservative),
    a 5-sigma margin (false-alarm rate below 1e-6 if the effects were absent)."""
    cfg, apg, plain = gallery["cfg"]["overshoot"], gallery["apg"]["overshoot"], gallery["unguided"]["overshoot"]
    assert cfg[0] - plain[0] > 5 * max(cfg[1], plain[1]) * np.sqrt(2)
    assert cfg[0] - apg[0] > 5 * max(cfg[1], apg[1]) * np.sqrt(2)
    assert gallery["cfg"]["spread_ratio"] < gallery["unguided"]["spread_ratio"]


def test_the_figure_is_written(tmp_path):
    path = plot_rule_gallery(tmp_path / "gallery.png", n=200, steps=10)
    assert path.exists() and path.stat().st_size > 10_000
