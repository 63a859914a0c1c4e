"""Deprecated alias of :mod:`auditor.analysis.spray.clusters`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.metrics.clusters`` gives the very module object of
``auditor.analysis.spray.clusters``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.analysis.spray import clusters as _moved
from auditor.analysis.spray.clusters import *  # noqa: F403

_sys.modules[__name__] = _moved
