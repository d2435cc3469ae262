r"""The audit a library engineer runs on their own guidance code: any implementation against any registered rule.

::

    from verify.conformance import audit_rule
    result = audit_rule(my_apg, "apg", params={"eta": 0.0, "norm_threshold": 2.0})
    result.passed, result.failures, result.diagnosis.summary, result.spaces

See :mod:`verify.conformance.rule_audit` for what is checked, :mod:`verify.conformance.implementations` for the
adapters (plain functions, dict-of-branches functions, registered rules, diffusers guiders, k-diffusion wrappers),
:mod:`verify.conformance.variants` for the diagnosis and :mod:`verify.conformance.reference` for the rounding bound.
"""

from .implementations import (
                              BranchesFunction,
                              Call,
                              CombinerFunction,
                              Implementation,
                              RuleImplementation,
                              as_implementation,
)
from .rule_audit import Check, Diagnosis, RuleAudit, SpaceAgreement, audit_rule

__all__ = ["audit_rule", "RuleAudit", "Check", "Diagnosis", "SpaceAgreement", "Call", "Implementation",
           "CombinerFunction", "BranchesFunction", "RuleImplementation", "as_implementation"]
