"""fastvideo's public test kit, for the core's tests and for plugins' own.

* :func:`assert_close`, :func:`assert_no_worse`, :func:`rel_error`: numerical checks relative to the
  reference's scale (kernels against ``reference.py``, models against diffusers).
* :func:`fake_plugins`, :func:`plugin_module`: register hook implementations in-process, isolated
  from whatever else is installed.
* :class:`DummyDist`, :func:`install_dists`, :func:`plugin_env`, :func:`run_fv`,
  :func:`run_python`: build and pip-install real plugin distributions and run ``fv`` against
  them in a subprocess; :func:`fv_generate` runs ``fv generate`` and reads the video back.
* :func:`mean_ssim`: structural similarity of two uint8 videos (regression tests of generations).
* :func:`write_hf_cache`: a Hugging Face cache entry on disk, for offline resolution tests.
* :func:`corrupt_copy` (truncated, bit-flipped, dropped or reshaped tensors), :func:`rewrite_checkpoint`,
  :func:`assert_same_placeholders`: checkpoint test helpers.
* :mod:`fastvideo.testing.loras`: a random LoRA file written by our layers, and the load / merge /
  unmerge / unload checks of LoRA files in a pipeline against a reference video.
* :mod:`fastvideo.testing.parallel`: the tiny generation of parallel tests and the check of every
  rank's latents and frames against one process.
* :mod:`fastvideo.testing.serve`: ``ServeProcess``, ``fv serve`` in a subprocess on a free port (started,
  waited for, killed with its workers, stopped), for tests of the server.
* :mod:`fastvideo.testing.toys`: ``SelfAttention``, a toy layer through the attention seam for
  tests of backends and their per-layer modules (imported on its own: it imports torch).
* :mod:`fastvideo.testing.conformance`: ``DiTConformance``, the tests every model family's DiT
  passes against its diffusers reference (imported on its own: it needs torch and pytest).

Importing this package does not import torch.
"""

from fastvideo.testing.checkpoints import (
    Corruption,
    assert_same_placeholders,
    corrupt_copy,
    rewrite_checkpoint,
)
from fastvideo.testing.dists import (
    DummyDist,
    fv_command,
    fv_generate,
    install_dists,
    plugin_env,
    run_fv,
    run_python,
    write_dist,
)
from fastvideo.testing.hub import write_hf_cache
from fastvideo.testing.numeric import assert_close, assert_no_worse, rel_error
from fastvideo.testing.plugins import fake_plugins, plugin_module
from fastvideo.testing.video import mean_ssim

__all__ = [
    "Corruption",
    "DummyDist",
    "assert_close",
    "assert_no_worse",
    "assert_same_placeholders",
    "corrupt_copy",
    "fake_plugins",
    "fv_command",
    "fv_generate",
    "install_dists",
    "mean_ssim",
    "plugin_env",
    "plugin_module",
    "rel_error",
    "rewrite_checkpoint",
    "run_fv",
    "run_python",
    "write_dist",
    "write_hf_cache",
]
