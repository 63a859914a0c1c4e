"""Deprecated alias of :mod:`auditor.audit.status`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.status`` gives the very module object of
``auditor.audit.status``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import status as _moved
from auditor.audit.status import *  # noqa: F403

_sys.modules[__name__] = _moved
