"""turbo_batch: deterministic, resumable multi-GPU batch rendering for few-step Wan video diffusion."""
__version__ = "0.1.0"
