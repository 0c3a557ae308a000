"""docs/reliability.md cannot rot: every row of its tables names a test
(``tests/<file>.py::<test>``) that exists in the tests tree; the README quotes what the code
estimates. Pure Python, no fiftyone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = ROOT / "docs" / "reliability.md"
TEST_ID = re.compile(r"^`(tests/[\w/]+\.py)::(test_\w+)`$")


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table (header and separator rows skipped)."""
    rows, in_table = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:  # the header row; the separator follows
            in_table = True
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        rows.append(cells)
    return rows


def test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}


test_functions.__test__ = False  # a helper, not a test


def test_every_reliability_row_names_an_existing_test() -> None:
    rows = table_rows(RELIABILITY.read_text(encoding="utf-8"))
    assert len(rows) >= 60, f"only {len(rows)} rows: did the table format change?"
    missing, malformed = [], []
    cache: dict[str, set[str]] = {}
    for cells in rows:
        assert len(cells) == 3, f"a row needs fault | what the user sees | test: {cells}"
        match = TEST_ID.match(cells[2])
        if match is None:
            malformed.append(cells[2])
            continue
        file, name = match.groups()
        if file not in cache:
            path = ROOT / file
            cache[file] = test_functions(path) if path.is_file() else set()
        if name not in cache[file]:
            missing.append(f"{file}::{name}")
    assert not malformed, f"not a tests/<file>.py::<test> id: {malformed}"
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_the_checker_catches_a_missing_test(tmp_path) -> None:
    rows = table_rows("| a | b | c |\n|---|---|---|\n| x | y | `tests/test_docs.py::test_nope` |\n\ntext\n")
    assert rows == [["x", "y", "`tests/test_docs.py::test_nope`"]]
    assert "test_nope" not in test_functions(Path(__file__))
    assert "test_every_reliability_row_names_an_existing_test" in test_functions(Path(__file__))


def test_the_readme_quotes_what_fal_check_will_cost() -> None:
    """The price a user reads before their first paid run is the estimate fal-check shows."""
    from sam_backend.backends.fal import FalBackend, FalConfig
    from sam_backend.backends.fal.selfcheck import estimate

    quoted = re.search(r"about \$([\d.]+): (\d+) requests\s+of (\d+) frames", (ROOT / "README.md").read_text())
    assert quoted, "README's 'Before your first paid run' no longer quotes the check's cost"
    with FalBackend(FalConfig(key="k:s")) as backend:
        usd, detail = estimate(backend)
    assert (quoted[1], f"{quoted[2]} request(s) x {quoted[3]} frames") == (f"{usd:.2f}", detail.split(":")[0])
