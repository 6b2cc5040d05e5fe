"""Model definitions (Wan DiT, VAE, text encoder) and checkpoint loading."""
