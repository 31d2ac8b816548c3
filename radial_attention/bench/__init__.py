"""Benchmark harnesses that ship with the package (``radial-attention bench``).

:mod:`radial_attention.bench.cases` holds the case tables (no torch); :mod:`radial_attention.bench.attention`
times and checks the attention backends on them."""
