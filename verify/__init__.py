"""Everything that judges a model: guidance rules, target laws, tolerances, statistics, the claims ledger, the audit.

Public contract (docs/contract.md): ``from verify import audit_rule`` (any implementation against any registered
rule, :mod:`verify.conformance`) and ``audit_cfg`` (the CFG-only audit); the rules (``from verify import rules``:
``rules.names()``, ``rules.get(name, **params)``) and the exact Gaussian laws of continuous-time guided sampling
(``exact_gaussian_law`` for any linear rule, ``exact_gaussian_cfg_law`` its CFG case).
"""

from . import rules
from .audit import AuditResult, audit_cfg
from .conformance import RuleAudit, audit_rule
from .exact_law import exact_gaussian_cfg_law, exact_gaussian_law

# the samplers of the tilted target register themselves (verify.samplers.TILTED_SAMPLERS) when imported
from . import tilted_exact, tilted_langevin, tilted_smc  # noqa: E402, F401  isort: skip

__all__ = ["AuditResult", "audit_cfg", "audit_rule", "RuleAudit", "rules", "exact_gaussian_law",
           "exact_gaussian_cfg_law"]
