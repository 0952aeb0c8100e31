"""The tables of docs/ARCHITECTURE.md that are generated from the code, so they cannot go stale.

``python -m devtools.doc_tables`` rewrites each block between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``; ``tests/test_docs_tables.py`` fails when a block differs from what this makes.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def config_table() -> str:
    from h2cache.config import config_fields

    rows = ["| field | role | type | default | allowed |", "|---|---|---|---|---|"]
    for f in config_fields():
        rows.append(f"| `{f.name}` | {f.role} | {f.kind.__name__} | `{f.default!r}` | {f.allowed()} |")
    return "\n".join(rows)


def record_table() -> str:
    from h2cache.trace import StepRecord

    return "`StepRecord` fields: " + ", ".join(f"`{f.name}`" for f in fields(StepRecord)) + "."


def methods_table() -> str:
    from h2cache.methods import METHODS

    rows = ["| method | settings | summary |", "|---|---|---|"]
    for m in METHODS.values():
        rows.append(f"| `{m.name}` | {', '.join(s.name for s in m.settings) or '-'} | {m.summary} |")
    return "\n".join(rows)


TABLES = {"config-fields": config_table, "step-record": record_table, "methods": methods_table}


def block(name: str) -> re.Pattern:
    return re.compile(rf"<!-- generated:{name} -->\n.*?<!-- /generated:{name} -->", re.S)


def render(text: str) -> str:
    for name, make in TABLES.items():
        filled = f"<!-- generated:{name} -->\n{make()}\n<!-- /generated:{name} -->"
        text, found = block(name).subn(lambda m, filled=filled: filled, text)
        if not found:
            raise ValueError(f"{ARCHITECTURE} has no block generated:{name}")
    return text


def main() -> None:
    ARCHITECTURE.write_text(render(ARCHITECTURE.read_text()))
    print(f"rewrote {len(TABLES)} generated tables in {ARCHITECTURE}")


if __name__ == "__main__":
    main()
