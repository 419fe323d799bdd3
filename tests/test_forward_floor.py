"""The DiT forward's floor (bench/forward_floor.py) counts its work from the model's own layers and keep-set, so the
figures quoted for the issue's 125 ms target follow the code."""
from bench.forward_floor import MODELS, attention_tflop, elementwise_gb, gemm_tflop, video_tokens
from turbo_batch.models.dit import DiTConfig

CFG = DiTConfig(**MODELS["1.3b"])


def test_the_1_3b_480p_forward_has_32760_tokens():
    assert video_tokens(CFG, "480p", 81) == 21 * 30 * 52 == 32760


def test_its_gemms_are_72_7_tflop_in_fp8_and_9_4_in_bf16_for_the_kept_o_projections():
    gemms = gemm_tflop(CFG, 32760, text_rows=512)
    assert round(gemms["fp8"], 1) == 72.7 and round(gemms["bf16"], 1) == 9.4


def test_with_nothing_kept_every_block_gemm_is_fp8_and_the_total_is_unchanged():
    kept, none_kept = gemm_tflop(CFG, 32760, 512), gemm_tflop(CFG, 32760, 512, keep=())
    assert none_kept["bf16"] == 0 and abs(none_kept["fp8"] - sum(kept.values())) < 1e-9


def test_sla_at_top_k_0_1_keeps_51_of_512_key_blocks_per_query_block():
    attn = attention_tflop(CFG, 32760, text_rows=512, topk=0.1)
    assert abs(attn["sla kept blocks"] - 256 * 51 * 128 * 64 * 128 * 4 * 12 * 30 / 1e12) < 1e-9
    assert round(attn["sla kept blocks"], 1) == 19.7 and attn["cross-attention"] < attn["sla kept blocks"] / 5


def test_the_memory_bound_passes_move_23_bytes_per_token_and_channel_per_block():
    assert abs(elementwise_gb(CFG, 32760) - 23 * 32760 * 1536 * 30 / 1e9) < 1e-9
