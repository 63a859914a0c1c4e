"""Deprecated alias of :mod:`auditor.analysis.spray.subgroups`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.metrics.subgroups`` gives the very module object of
``auditor.analysis.spray.subgroups``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.analysis.spray import subgroups as _moved
from auditor.analysis.spray.subgroups import *  # noqa: F403

_sys.modules[__name__] = _moved
