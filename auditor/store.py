"""Deprecated alias of :mod:`auditor.audit.store`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.store`` gives the very module object of
``auditor.audit.store``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import store as _moved
from auditor.audit.store import *  # noqa: F403

_sys.modules[__name__] = _moved
