"""Wan2.1 / Wan2.2 models: DiT (T2V, I2V), configs and checkpoint loading, VAE and umT5 text encoder."""
