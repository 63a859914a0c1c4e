"""Deprecated alias of :mod:`auditor.audit.heap`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.heap`` gives the very module object of
``auditor.audit.heap``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import heap as _moved
from auditor.audit.heap import *  # noqa: F403

_sys.modules[__name__] = _moved
