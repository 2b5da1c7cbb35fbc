"""fastvideo-cosmos: NVIDIA Cosmos-Predict2 and Predict2.5 world models for fastvideo."""

__version__ = "0.1.0"
