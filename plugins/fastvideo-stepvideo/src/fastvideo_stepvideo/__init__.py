"""fastvideo-stepvideo: StepFun's Step-Video-T2V (30B DiT, its video VAE, Step-LLM + HunyuanCLIP)."""

__version__ = "0.1.0"
