"""``python -m fleetpulse`` runs the CLI."""

from .cli import main

raise SystemExit(main())
