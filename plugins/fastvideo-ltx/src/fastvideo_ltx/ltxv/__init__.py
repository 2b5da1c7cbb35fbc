"""LTX-Video 0.9.x: the DiT, its checkpoint names, the pipelines and the presets.

LTX-2 (audio and video) will live beside this package, in its own modules.
"""
