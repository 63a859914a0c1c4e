"""Deprecated alias of :mod:`auditor.audit.streaming`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.streaming`` gives the very module object of
``auditor.audit.streaming``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import streaming as _moved
from auditor.audit.streaming import *  # noqa: F403

_sys.modules[__name__] = _moved
