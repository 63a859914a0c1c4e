"""Finding rules: one function per rule, its description (printed verbatim in the report's
methodology and in ``summary["rules"]``) beside it.

A rule is ``fn(ctx: RuleContext) -> list[Finding]`` registered with :func:`finding_rule`
together with ``describe(rules: FindingRules, confidence: float) -> str``. Rules run in
registration order; their findings are then sorted by severity, class and kind and numbered
``F1``, ``F2``, … (:func:`run_rules`). Adding a rule: write the function with
``@finding_rule("my_rule", describe=...)`` in the family module it belongs to (or any module
imported before the analysis runs) and add a test with a table that triggers it and one that
must not (``tests/test_finding_registry.py`` adds one from a test module).

One module per family of rules, imported here in the order the rules run:

* :mod:`~auditor.analysis.findings.registry`: ``RuleContext``, ``FindingRules``,
  ``finding_rule``, running, numbering, flags;
* :mod:`~auditor.analysis.findings.background`: ``background_focus``, ``background_reliance``;
* :mod:`~auditor.analysis.findings.attention`: ``right_for_wrong_reasons``, ``border_focus``,
  ``method_disagreement``;
* :mod:`~auditor.analysis.findings.subgroups`: ``subgroup_shortcut``, ``strategy_cluster``,
  ``background_sufficiency``;
* :mod:`~auditor.analysis.findings.sanity`: ``sanity_check``;
* :mod:`~auditor.analysis.findings.absolute`: ``absolute_background``, ``intervention_check``
  (against absolute baselines, issue 22);
* :mod:`~auditor.analysis.findings.run`: ``nonfinite_logits``;
* :mod:`~auditor.analysis.findings.maps`: ``empty_maps``.

Rules (the thresholds are fields of :class:`FindingRules`; those of SpRAy and the sanity check
are read from :func:`auditor.analysis.spray.clusters.spray_clusters` and the sanity results):

* ``background_focus``: the class's mean background focus (primary method) has its whole
  confidence interval above the baseline of the other classes by at least ``margin`` and its
  size-adjusted energy lift is clearly lower. High when the interventions confirm it or the
  lift is below chance; a low-severity disagreement when the interventions refute it.
* ``background_reliance``: accuracy on only-foreground images (background removed, Xiao et
  al. 2021) drops by more than ``drop_margin`` with the interval's lower bound > 0. Without
  attention evidence it is a disagreement: medium when mixed-rand or only-background (natural
  pixels) agree, low when only the synthetic fill shows it.
* ``right_for_wrong_reasons``: among correct predictions, the share whose CAM puts less mass
  on the object than its area (energy lift < 1) has a Wilson lower bound above 0.5.
* ``border_focus``: mean CAM mass in the outer band above the other classes' baseline.
* ``method_disagreement``: two methods' mean background focus differ by > ``disagreement``.
* ``subgroup_shortcut`` / ``strategy_cluster``: a SpRAy cluster of a class tested against the
  rest of its class (:mod:`auditor.analysis.spray.subgroups`, :mod:`auditor.subgroup_findings`).
* ``background_sufficiency``: the background alone is predicted as the class far more often
  than other classes' backgrounds are (Xiao et al. 2021).
* ``sanity_check``: a method whose maps barely change when the weights that produce them
  (the head and the target layer's block) are randomised.
* ``absolute_background`` / ``intervention_check``: see :mod:`~auditor.analysis.findings.absolute`.
* ``nonfinite_logits``: at least 1 % of the samples got NaN/Inf logits (high from 5 %).
* ``empty_maps``: at least half of a class's maps of one method are empty (zero, constant,
  non-finite, failed); high from 90 % of the primary method's.
"""

from __future__ import annotations

import importlib

from auditor.analysis.findings.registry import (
    FINDING_RULES,
    SEVERITY_ORDER,
    FindingRule,
    FindingRules,
    RuleContext,
    apply_flags,
    class_finding,
    describe_rules,
    finding_rule,
    number_findings,
    per_class,
    run_rules,
    unregister_rule,
)

#: the family modules, imported (registering their rules) in this order: the order the rules
#: run, their findings are produced and summary.json ``rules`` lists them
RULE_FAMILIES = ("background", "attention", "subgroups", "sanity", "absolute", "run", "maps")
for _family in RULE_FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = [
    "FINDING_RULES",
    "RULE_FAMILIES",
    "SEVERITY_ORDER",
    "FindingRule",
    "FindingRules",
    "RuleContext",
    "apply_flags",
    "class_finding",
    "describe_rules",
    "finding_rule",
    "number_findings",
    "per_class",
    "run_rules",
    "unregister_rule",
]
