"""Everything that judges a model: guidance rules, target laws, tolerances, statistics, the claims ledger, the audit.

Public contract (docs/contract.md): ``from verify import audit_cfg``.
"""

from .audit import AuditResult, audit_cfg

__all__ = ["AuditResult", "audit_cfg"]
