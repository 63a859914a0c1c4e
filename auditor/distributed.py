"""Deprecated alias of :mod:`auditor.audit.distributed`: moved in issue 21.

The alias stays for one release (see CHANGELOG.md).
``import auditor.distributed`` gives the very module object of
``auditor.audit.distributed``: the same functions, classes and state
(monkeypatching either name patches both).
"""

import sys as _sys

from auditor.audit import distributed as _moved
from auditor.audit.distributed import *  # noqa: F403

_sys.modules[__name__] = _moved
