"""Integrations with model libraries. ``radial_attention.integrations.diffusers``: Hugging Face diffusers."""
