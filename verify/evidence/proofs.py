"""The sympy proofs of ``proofs/`` as evidence: run once per ledger run and read by every claim they bear on."""

from __future__ import annotations

from dataclasses import dataclass

from . import provider

__all__ = ["ProofResults", "proof_results"]


@dataclass(frozen=True)
class ProofResults:
    """Every proof's outcome (:class:`proofs.ProofResult`), in the order of :data:`proofs.PROOFS`."""

    results: tuple

    def status(self, claim_id: str) -> dict:
        """The proofs that bear on ``claim_id``: module, residual, whether it holds and came out as expected;
        ``all_hold`` (some proof bears on the claim and every one holds) and ``all_as_expected``."""
        mine = [r for r in self.results if claim_id in r.claim_ids]
        return {"proofs": [{"module": f"proofs/{r.name}.py", "residual": r.residual, "holds": r.holds,
                            "as_expected": r.as_expected, "corrected_residual": r.corrected_residual or None}
                           for r in mine],
                "all_hold": bool(mine) and all(r.holds for r in mine),
                "all_as_expected": all(r.as_expected for r in mine)}


@provider
def proof_results() -> ProofResults:
    """Run every sympy proof (a few seconds)."""
    import proofs

    return ProofResults(tuple(proofs.run_all()))
