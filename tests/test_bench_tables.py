"""bench/tables.py: the README's benchmark tables and the committed bench/results/*.md are what their JSON renders.

Nothing is measured here: the tables are rendered again from the JSON already in bench/results/.
"""

from __future__ import annotations

import pytest

from bench import tables
from bench.tables import README_TABLES, main, readme_block, splice_readme


def test_the_readme_and_the_committed_tables_match_their_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--check"])
    err = capsys.readouterr().err
    assert rc == 0, f"{err}run python -m bench.tables --readme (README.md) or --write (bench/results/*.md)"


def _readme(blocks: dict[str, str]) -> str:
    return "intro\n\n" + "".join(f"<!-- bench.tables:{n} -->\n{body}<!-- /bench.tables:{n} -->\n\nprose {n}\n\n"
                                 for n, body in blocks.items())


def test_splice_rewrites_only_what_stands_between_the_markers() -> None:
    stale = _readme({n: "\n| an old table |\n\n" for n in README_TABLES})
    fresh = splice_readme(stale)
    assert fresh == _readme({n: readme_block(n) for n in README_TABLES})
    assert splice_readme(fresh) == fresh
    for n in README_TABLES:
        assert f"prose {n}" in fresh and "an old table" not in fresh


@pytest.mark.parametrize(("edit", "words"), [
    (lambda t: t + "<!-- bench.tables:nonesuch -->\n<!-- /bench.tables:nonesuch -->\n", "unknown bench.tables block"),
    (lambda t: t.replace("<!-- /bench.tables:engine -->", ""), "no <!-- /bench.tables:NAME --> closes engine"),
    (lambda t: t.replace("<!-- bench.tables:hostile -->\n\n<!-- /bench.tables:hostile -->", ""), "missing: \\['hostile'\\]"),
    (lambda t: t + "<!-- bench.tables:engine -->\n<!-- /bench.tables:engine -->\n", "repeated: \\['engine'\\]"),
])
def test_a_broken_marker_is_an_error_naming_the_block(edit, words) -> None:
    text = _readme({n: "\n" for n in README_TABLES})
    with pytest.raises(ValueError, match=words):
        splice_readme(edit(text))


def test_the_readme_says_how_to_regenerate_its_tables() -> None:
    assert "python -m bench.tables --readme" in tables.README.read_text()
