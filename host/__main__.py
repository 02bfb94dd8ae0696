"""``python -m host``: see :mod:`host.cli`."""

from host.cli import main

raise SystemExit(main())
