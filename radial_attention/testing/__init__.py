"""Test fixtures that ship with the package: shared by the tests, the benchmarks and the ``demo``.

- :mod:`.oracle`: THE float64 masked-softmax attention (plain index arithmetic and exp / sum,
  no code shared with :mod:`radial_attention.ops`) that every backend is checked against, with
  its token mask, random block masks and NaN-placement helpers. Needs torch only.
- :mod:`.tiny`: tiny real diffusers models and pipelines with random weights (needs diffusers).
- :mod:`.data`: :func:`~.data.write_synthetic_dataset`, a training data folder of random samples.

Where it sits: above train (the data writer uses train's folder format) and below cli; the
library layers do not import it, with one exception: the built-in ``tiny-wan`` / ``tiny-hunyuan``
model names of ``train-lora`` are :mod:`.tiny` models. Submodules are imported on use:
``import radial_attention.testing`` loads nothing.
"""
