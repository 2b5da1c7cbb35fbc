"""Parallel strategies: Ulysses, ring and USP sequence parallelism, CFG parallelism, FSDP2, tensor
parallelism and parallel VAE decoding, on ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

* :mod:`fastvideo.parallel.state`: the process groups and device mesh of a run (``current()``).
* :mod:`fastvideo.parallel.strategies`: the built-in :class:`~fastvideo.interfaces.ParallelStrategy`
  classes and :func:`~fastvideo.parallel.strategies.parallelize`, which applies them to a pipeline.
* :mod:`fastvideo.parallel.sequence`: token sharding of DiT blocks and sequence-parallel attention.
* :mod:`fastvideo.parallel.launch`: one worker per GPU for ``fv generate --num-gpus N``, or torchrun.

Importing this package does not import torch; docs/parallel.md is the user guide.
"""
