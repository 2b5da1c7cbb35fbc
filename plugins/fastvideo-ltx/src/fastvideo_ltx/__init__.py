"""fastvideo-ltx: Lightricks' LTX models for fastvideo."""
