"""The Wan DiT sizes and latent grids the forward benchmarks share (random weights of these shapes time as the real)."""
MODELS = {"1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
          "14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)}
LATENT = {"480p": (60, 104), "720p": (90, 160)}  # latent (h, w) of 480 x 832 and 720 x 1280 frames
