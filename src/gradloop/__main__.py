"""`python -m gradloop ...` is the `gradloop` command."""

from .cli.main import main

raise SystemExit(main())
