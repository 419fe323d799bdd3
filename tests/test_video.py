"""MP4 encoding: pinned settings give identical bytes for identical frames."""
import hashlib

import numpy as np
import pytest

from turbo_batch.video import decode_mp4, encode_mp4


def frames(seed=0, n=9, h=32, w=64):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_same_frames_encode_to_the_same_bytes(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    encode_mp4(frames(), str(a))
    encode_mp4(frames(), str(b))
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b"").digest()


def test_encoded_video_decodes_to_the_same_size_and_count(tmp_path):
    encode_mp4(frames(n=5), str(tmp_path / "v.mp4"), fps=16)
    out = decode_mp4(str(tmp_path / "v.mp4"))
    assert out.shape == (5, 32, 64, 3)


def test_odd_sizes_and_wrong_dtypes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames(h=31), str(tmp_path / "x.mp4"))
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(frames().astype(np.float32), str(tmp_path / "x.mp4"))
