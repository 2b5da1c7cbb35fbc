"""Parallel strategies: Ulysses, ring and USP sequence parallelism, CFG parallelism, FSDP2, tensor
parallelism and parallel VAE decoding, on ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

* :mod:`fastvideo.parallel.state`: the process groups and device mesh of a run (``current()``).
* :mod:`fastvideo.parallel.strategies`: the built-in :class:`~fastvideo.interfaces.ParallelStrategy`
  classes and :func:`~fastvideo.parallel.strategies.parallelize`, which applies them to a pipeline.
* :mod:`fastvideo.parallel.sequence`: token sharding of DiT blocks and sequence-parallel attention
  (Ulysses all-to-all in :mod:`~fastvideo.parallel.comm`, ring attention in :mod:`~fastvideo.parallel.ring`).
* :mod:`fastvideo.parallel.cfg`, :mod:`~fastvideo.parallel.fsdp`, :mod:`~fastvideo.parallel.tp`,
  :mod:`~fastvideo.parallel.vae`: CFG branches per rank, FSDP2/HSDP, tensor-parallel text encoders,
  VAE tiles per rank.
* :mod:`fastvideo.parallel.launch`: one worker per GPU for ``fv generate --num-gpus N``, or torchrun.
* :mod:`fastvideo.parallel.testing`: run a function on several CPU processes over gloo (tests).

Importing this package does not import torch; docs/parallel.md is the user guide.
"""
