"""Tests parametrised over devices run on CUDA too where a GPU is present; those cases carry the
``gpu`` marker, so ``make gpu-check`` (``pytest -m gpu``) runs exactly them."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("device") == "cuda" or "cuda" in item.name:
            item.add_marker(pytest.mark.gpu)
