"""Samplers: rCM few-step (TurboDiffusion) and Euler flow matching (the original recipe, for baselines)."""
