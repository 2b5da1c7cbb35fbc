"""fastvideo-dmd2: Distribution Matching Distillation 2 (arXiv 2405.14867) for fastvideo.

Registers the training algorithm ``dmd2`` (``fv train`` with ``algorithm: dmd2``) and the command
``fv distill dmd2``. See docs/dmd2.md.
"""
