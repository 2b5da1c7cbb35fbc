"""The conditioning image as LTX-2 saw images in training: one frame through H.264 and back.

LTX-2's training clips were H.264 videos, so its image-to-video pipelines (Lightricks' ``ltx-pipelines``
and diffusers' ``image_crf``) first compress the conditioning image as a one-frame H.264 video at a given
CRF (33 for LTX-2 and LTX-2.3) and decode it again; an image fed without those artefacts is a
slightly different input than the model learnt to continue. CRF 0 leaves the image as it is.

Encoded with PyAV (libx264, ``veryfast`` preset, yuv420p, the frame cropped to even sides), in memory.
"""

from __future__ import annotations

import io
from typing import Any

#: LTX-2 and LTX-2.3's conditioning-image CRF (``ltx-pipelines``' default for Gemma-3 checkpoints).
LTX2_IMAGE_CRF = 33
#: libx264's CRF range.
MAX_CRF = 51


def check_crf(value: int) -> str | None:
    """``None`` for a CRF libx264 takes (0, no compression, to 51), else what is wrong."""
    return None if 0 <= value <= MAX_CRF else f"must be an H.264 CRF from 0 (off) to {MAX_CRF}"


def recompress_h264(image: Any, crf: int) -> Any:
    """``image`` (PIL, any mode) -> an RGB PIL image: the frame encoded as H.264 at ``crf`` and decoded
    (sides rounded down to even numbers, as yuv420p needs); ``crf=0`` returns it in RGB, unchanged.

    :raises ValueError: ``crf`` outside 0..51, or PyAV not installed (with the two ways out).
    """
    import numpy as np
    from PIL import Image

    problem = check_crf(crf)
    if problem:
        raise ValueError(f"image CRF {problem}, got {crf!r}")
    rgb = image.convert("RGB")
    if crf == 0:
        return rgb
    try:
        import av
    except ImportError:
        raise ValueError(
            "re-compressing the conditioning image as LTX-2 was trained needs PyAV: pip install av "
            "(or pass --image-crf 0 to use the image as it is)"
        ) from None
    pixels = np.asarray(rgb)
    height, width = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
    if height == 0 or width == 0:
        raise ValueError(
            f"the conditioning image is {pixels.shape[1]}x{pixels.shape[0]}; it needs 2x2 pixels or more"
        )
    pixels = np.ascontiguousarray(pixels[:height, :width])
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.width, stream.height = width, height
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
        for packet in (*stream.encode(frame), *stream.encode()):  # the frame, then the encoder flushed
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer, mode="r") as src:
        decoded = next(src.decode(video=0))
        return Image.fromarray(decoded.to_ndarray(format="rgb24"))
