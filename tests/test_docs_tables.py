"""docs/ARCHITECTURE.md's field and method lists are the code's (regenerate: python -m devtools.doc_tables)."""

from devtools.doc_tables import ARCHITECTURE, TABLES, block, render


def test_the_generated_tables_match_the_code():
    text = ARCHITECTURE.read_text()
    assert render(text) == text, "docs/ARCHITECTURE.md is stale: run python -m devtools.doc_tables"


def test_the_check_sees_a_stale_table():
    text = ARCHITECTURE.read_text()
    stale = block("config-fields").sub(lambda m: "<!-- generated:config-fields -->\n| `tau9` |\n"
                                               "<!-- /generated:config-fields -->", text)
    assert render(stale) != stale and set(TABLES) == {"config-fields", "step-record", "methods"}
