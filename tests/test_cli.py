"""The `turbo-batch` command line: validate, exit codes, FP8 conversion that loads back without re-quantizing."""
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from turbo_batch.cli import main


def test_validate_lists_bad_rows_and_exits_1(tmp_path, capsys):
    pq.write_table(pa.table({"prompt": ["ok", ""], "seed": pa.array([1, 2], pa.int64())}), tmp_path / "m.parquet")
    assert main(["validate", str(tmp_path / "m.parquet")]) == 1
    pq.write_table(pa.table({"prompt": ["ok"], "seed": pa.array([1], pa.int64())}), tmp_path / "good.parquet")
    assert main(["validate", str(tmp_path / "good.parquet")]) == 0


def test_an_invalid_manifest_file_or_override_exits_2(tmp_path):
    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "noseed.parquet")
    assert main(["validate", str(tmp_path / "noseed.parquet")]) == 2
    assert main(["render", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert main(["validate", str(tmp_path / "noseed.parquet"), "sampler.steps=2"]) == 2


def test_an_fp8_checkpoint_loads_back_bit_identical_without_requantizing(tmp_path):
    from kernels.fp8_linear import FP8Linear
    from turbo_batch.config import load_preset
    from turbo_batch.models.dit import DiTConfig
    from turbo_batch.models.dit_checkpoints import load_dit, random_dit
    from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_

    assert main(["convert-fp8", "--model", "tiny-t2v", "--out-dir", str(tmp_path)]) == 0
    cfg = DiTConfig.from_dict(dict(load_preset("tiny-t2v").dit))
    loaded = load_dit(cfg, tmp_path / "tiny-t2v-main-fp8.safetensors")
    # the default keeps self o and cross o, k, v in bf16: self q k v, cross q, ffn 0 2 are fp8 in each block
    assert sum(isinstance(m, FP8Linear) for m in loaded.modules()) == 2 * 6
    fresh = quantize_linears_(random_dit(cfg, 1234 + 1000, dtype=torch.bfloat16), keep=DEFAULT_KEEP_BF16)
    x = torch.randn(1, 16, 2, 4, 8)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 16, cfg.text_dim)
    with torch.no_grad():
        assert torch.equal(loaded(x.bfloat16(), t, ctx.bfloat16()), fresh(x.bfloat16(), t, ctx.bfloat16()))
