"""Every public name of the top-level package resolves (they are imported lazily)."""

import pytest

import radial_attention


@pytest.mark.parametrize("name", [n for n in radial_attention.__all__ if n != "__version__"])
def test_public_names_resolve(name):
    assert getattr(radial_attention, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        radial_attention.nope  # noqa: B018 (the lazy __getattr__ raises)
