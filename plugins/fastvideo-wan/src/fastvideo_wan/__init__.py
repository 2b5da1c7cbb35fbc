"""fastvideo-wan: the Wan 2.1 / 2.2 model family for fastvideo."""

__version__ = "0.1.0"
