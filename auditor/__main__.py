"""``python -m auditor`` (and ``torchrun -m auditor run ...``): the command line."""

from auditor.cli import main

raise SystemExit(main())
