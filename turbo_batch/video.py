"""MP4 encoding and decoding with PyAV, with settings that make the bytes reproducible.

libx264 output depends on the thread count and (on AVX-512 CPUs) on macroblock-tree lookahead, so we pin
`threads=1` and `mbtree=0` and write the container with `fflags=+bitexact` (REFERENCE §9). Same build + same
settings -> same bytes. The identity of a render is still its raw-frame hash; the MP4 hash checks integrity.
Encoding is CPU work: callers run it off the GPU's critical path (the actor's encoder thread).
"""
from __future__ import annotations

import hashlib

import numpy as np

ENCODER_SETTINGS = {"codec": "libx264", "pix_fmt": "yuv420p", "x264-params": "mbtree=0:threads=1"}


def encode_mp4(frames: np.ndarray, path: str, *, fps: int = 16, crf: int = 18, threads: int = 1) -> None:
    """Write uint8 [F, H, W, 3] frames to `path` as H.264/yuv420p MP4 (H and W must be even)."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    with av.open(path, mode="w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(ENCODER_SETTINGS["codec"], rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, ENCODER_SETTINGS["pix_fmt"]
        stream.codec_context.thread_count = threads
        stream.options = {"crf": str(crf), "preset": "medium",
                          "x264-params": f"mbtree=0:threads={threads}"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_mp4_bytes(frames: np.ndarray, fps: int = 16, crf: int = 18, threads: int = 1) -> bytes:
    """`encode_mp4` into memory (via a private temp file): the unit of work of the actors' encoder processes."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="turbo-enc-") as d:
        path = os.path.join(d, "v.mp4")
        encode_mp4(frames, path, fps=fps, crf=crf, threads=threads)
        with open(path, "rb") as f:
            return f.read()


def decode_mp4(path_or_file, max_frames: int | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of an MP4 (for contact sheets and checks; lossy vs the rendered frames)."""
    import av

    frames = []
    with av.open(path_or_file) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
