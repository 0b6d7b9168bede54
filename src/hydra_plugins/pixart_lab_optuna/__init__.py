"""Hydra sweeper plugins of PixArt-Lab (found by Hydra in the ``hydra_plugins`` namespace)."""
