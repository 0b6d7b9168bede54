"""Thin Hydra entry points, one per DVC stage: ``python -m pixart_lab.cli.<stage> key=value``."""

import pixart_lab.config  # noqa: F401  (registers the config resolvers)
