"""The forecast diagnosis table in docs/BENCHMARKS.md is what its stored raw files give."""

from pathlib import Path

from devtools.forecast_diagnosis import summary

ROOT = Path(__file__).resolve().parent.parent
RAW = sorted((ROOT / "docs" / "benchmarks" / "forecast-diagnosis").glob("*.json"))


def test_the_table_in_the_docs_is_generated_from_the_raw_files():
    assert len(RAW) == 2
    assert summary([str(p) for p in RAW]) in (ROOT / "docs" / "BENCHMARKS.md").read_text()
