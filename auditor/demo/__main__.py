"""``python -m auditor.demo``: the shortcut demo (:func:`auditor.demo.shortcut.main`)."""

from auditor.demo.shortcut import main

raise SystemExit(main())
