"""PixArt-Lab: reproducible PixArt-alpha-style text-to-image training."""

__version__ = "0.1.0"
