"""``python -m framework.process``: see :mod:`framework.process.cli`."""

from framework.process.cli import main

raise SystemExit(main())
