"""`python -m distcomp_obs` is the `distcomp` command (tests and the bench start workers this way)."""

from distcomp_obs.cli import main

raise SystemExit(main())
