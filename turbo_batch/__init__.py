"""turbo_batch: deterministic, resumable multi-GPU batch rendering for few-step Wan video diffusion."""
__version__ = "0.1.0"

# Which arithmetic this code computes frames with. Bumped whenever a change alters any frame of an unchanged row,
# config and runtime; part of every row's runtime id (`worker.runtime_id`), hence of its render key, so a rerun after
# an upgrade renders rows of an older version again instead of mixing two arithmetics in one output, and `verify`
# reports them as made by another version instead of as mismatches.
#   1: every version before this counter (their ids carry no version; earlier arithmetic changes went uncounted).
#   2: the VAE's sub-pixel upsamplers and its attention on SDPA's fused kernel (session 21).
#   3: the VAE's RMS norm + SiLU summed over a row in three segments (`vae_elementwise.SEGMENTED_NORM`, session 25).
NUMERICS_VERSION = 3
