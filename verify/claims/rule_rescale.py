"""L-RESCALE: rescaling the guided prediction's spread fixes over-exposure at high scales (pending: no image-like
world here to measure over-exposure on)."""

from __future__ import annotations

from . import Decision, claim


@claim("L-RESCALE", order=306,
       source="Lin et al. 2023, 'Common diffusion noise schedules and sample steps are flawed', section 3.4",
       statement=("rescaling the guided prediction's standard deviation to the conditional one's fixes overexposure "
                  "at high scales"),
       tests=("tests/test_claims_rules_declared.py::test_rescale_is_pending",))
def rescale() -> Decision:
    """Pending: over-exposure is a pixel-range property, which the Gaussian-mixture worlds do not have."""
    return Decision.pending("pixel-range over-exposure against the guidance scale, with and without verify.rules' "
                            "rescale rule, on image-like worlds (a bounded pixel range that high scales can leave)")
