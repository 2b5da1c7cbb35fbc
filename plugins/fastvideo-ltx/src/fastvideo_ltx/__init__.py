"""fastvideo-ltx: the LTX-Video family (0.9.x in :mod:`fastvideo_ltx.ltxv`) for fastvideo."""

__version__ = "0.1.0"
