"""Minimal, readable PyTorch reference implementations of multimodal MoE methods."""
