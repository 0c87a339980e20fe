"""``python -m geojobs.api``: the same as ``geojobs serve``."""

from geojobs.cli import main

raise SystemExit(main(["serve"]))
