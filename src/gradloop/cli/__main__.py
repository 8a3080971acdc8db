"""`python -m gradloop.cli ...` is the `gradloop` command."""

from .main import main

raise SystemExit(main())
