"""Finding checkpoints: local paths, the hub for users who are online, and what an offline user is told."""
import pytest

from turbo_batch.models.checkpoints import CheckpointError, resolve_file


def test_a_local_path_is_used_as_is(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert resolve_file({"path": str(f), "repo": "ignored/repo", "filename": "w.pth"}, "main") == f


def test_a_missing_local_path_names_the_setting(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoints.vae.path"):
        resolve_file({"path": str(tmp_path / "nope.pth")}, "vae")


def test_offline_the_error_names_the_file_and_the_setting_for_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    spec = {"repo": "TurboDiffusion/TurboWan2.1-T2V-1.3B-480P", "filename": "TurboWan2.1-T2V-1.3B-480P.pth", "path": None}
    with pytest.raises(CheckpointError) as e:
        resolve_file(spec, "main")
    msg = str(e.value)
    assert "TurboDiffusion/TurboWan2.1-T2V-1.3B-480P/TurboWan2.1-T2V-1.3B-480P.pth" in msg
    assert "checkpoints.main.path=" in msg


def test_a_preset_without_path_or_repo_says_what_to_set():
    with pytest.raises(CheckpointError, match="neither checkpoints.text_encoder.path nor checkpoints.text_encoder.repo"):
        resolve_file({}, "text_encoder")
