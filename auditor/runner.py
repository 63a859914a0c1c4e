"""Deprecated alias of :mod:`auditor.audit.runner`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.runner`` gives the very module object of
``auditor.audit.runner``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import runner as _moved
from auditor.audit.runner import *  # noqa: F403

_sys.modules[__name__] = _moved
