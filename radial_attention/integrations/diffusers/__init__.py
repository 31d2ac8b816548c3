"""Radial attention for Hugging Face diffusers video models (Wan2.1/2.2, HunyuanVideo).

``tiny``: tiny real diffusers models and pipelines with random weights, for tests and the demo.
"""
