"""Everything that judges a model: tolerances, claim checks, the ledger and its report."""
