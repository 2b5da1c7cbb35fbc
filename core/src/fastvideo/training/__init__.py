"""The training stack: preprocessing, the trainer, LoRA, checkpoints, EMA and export.

* ``fv preprocess`` (:mod:`.preprocess`): videos + captions -> latent / text-embedding shards.
* ``fv train`` (:mod:`.trainer`, :mod:`.config`): the algorithms registered through
  ``fv_register_training_algorithms`` (built-ins ``finetune`` and ``lora``, :mod:`.algorithms`) on
  the family's objective (:mod:`.objectives`), with checkpoints (:mod:`.checkpoint`), EMA
  (:mod:`.ema`) and the diffusers export (:mod:`.export`); attention backends own their training
  schedules (``AttentionBackend.option_values``).
* LoRA layers and files in the diffusers/peft format (:mod:`.lora`), also used by ``fv generate --lora``.

Importing this package does not import torch; the submodules that need it import it themselves.
"""
