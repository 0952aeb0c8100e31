"""Shared fixtures of the app tests: which embedded model to use, and one running `python app.py`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # app.py and ui/ live at the repository root
    sys.path.insert(0, str(ROOT))

from embedded_facts import find_embedded_model  # noqa: E402  (after the path fix above)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    found = find_embedded_model()
    # The model ships with the project: its absence is a failure, not a reason to skip.
    assert (found / "model_index.json").exists(), (
        f"no embedded model at {found}: train it with `python -m embedded_model.training` or set H2CACHE_EMBEDDED_MODEL")
    return found


@pytest.fixture(scope="session")
def app_server(embedded_model_dir: Path):
    """`python app.py` on a free port, for the whole session."""
    from devtools.local_server import LocalApp

    env = {"H2CACHE_EMBEDDED_MODEL": str(embedded_model_dir),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    with LocalApp(env=env) as app:
        yield app
