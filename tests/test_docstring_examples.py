"""Every runnable docstring example in the library (and beside it) runs and prints what it says (``+SKIP`` ones excepted)."""

import doctest
import importlib
import pkgutil

import pytest

import bench
import embedded_model
import h2cache

# The library, and the benchmark harness and the embedded model's builder that live beside it.
MODULES = sorted(m.name for package in (h2cache, bench, embedded_model)
                 for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
                 if not m.name.endswith("__main__")) + ["bench"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"
