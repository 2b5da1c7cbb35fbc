"""fastvideo-ltx: Lightricks' LTX models for fastvideo (LTX-Video 0.9.x in :mod:`fastvideo_ltx.ltxv`,
LTX-2 with sound in :mod:`fastvideo_ltx.ltx2`)."""

__version__ = "0.1.0"
