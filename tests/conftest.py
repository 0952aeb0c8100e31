"""Shared fixtures of the app tests: which embedded model to use, and one running `python app.py`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # app.py and ui/ live at the repository root
    sys.path.insert(0, str(ROOT))

# Until the trained model is committed, a stand-in with the same architecture and format serves.
STAND_IN_MODEL = Path("/work/probe_pipe")


def find_embedded_model() -> Path | None:
    """H2CACHE_EMBEDDED_MODEL if set, else assets/tiny-flux-scenes, else the stand-in; None if none exists."""
    explicit = os.environ.get("H2CACHE_EMBEDDED_MODEL")
    candidates = [Path(explicit)] if explicit else [ROOT / "assets" / "tiny-flux-scenes", STAND_IN_MODEL]
    return next((c for c in candidates if (c / "model_index.json").exists()), None)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    found = find_embedded_model()
    if found is None:
        pytest.skip("no embedded model: assets/tiny-flux-scenes/model_index.json is missing "
                    "(train it with `python -m h2cache.training`) and H2CACHE_EMBEDDED_MODEL is not set")
    return found


@pytest.fixture(scope="session")
def app_server(embedded_model_dir: Path):
    """`python app.py` on a free port, for the whole session."""
    from ui.local_server import LocalApp

    env = {"H2CACHE_EMBEDDED_MODEL": str(embedded_model_dir),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    with LocalApp(env=env) as app:
        yield app
