"""fastvideo-hunyuan: the HunyuanVideo model family for fastvideo."""

__version__ = "0.1.0"
