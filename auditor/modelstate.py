"""Deprecated alias of :mod:`auditor.audit.modelstate`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.modelstate`` gives the very module object of
``auditor.audit.modelstate``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import modelstate as _moved
from auditor.audit.modelstate import *  # noqa: F403

_sys.modules[__name__] = _moved
