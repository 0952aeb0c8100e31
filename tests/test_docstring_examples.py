"""Every runnable docstring example in the library runs and prints what it says (``+SKIP`` ones excepted)."""

import doctest
import importlib
import pkgutil

import pytest

import h2cache

MODULES = sorted(m.name for m in pkgutil.walk_packages(h2cache.__path__, "h2cache.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"
