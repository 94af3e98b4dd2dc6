"""The house rules that keep the codebase easy to pick up, checked against the tree.

- every module under 400 lines, or its docstring says why it is longer;
- the README's source layout names every package and top-level module that exists, and
  nothing that does not;
- the README's configuration table names every ``COURIERFLOW_*`` variable the code
  reads, and no variable the code no longer reads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "courierflow"
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: modules may be this long before their docstring has to say why
MAX_MODULE_LINES = 400
#: the phrase a longer module's docstring carries, with its reason
LONG_MODULE_PHRASE = "over 400 lines"
VARIABLE = re.compile(r"COURIERFLOW_[A-Z0-9_]*[A-Z0-9]\b")


def _section(title: str) -> str:
    """The README's text from the ``## title`` heading to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_under_400_lines_or_says_why() -> None:
    long = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines <= MAX_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if LONG_MODULE_PHRASE not in docstring:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"split these modules, or say in the docstring why not: {long}"


def test_the_readme_layout_matches_the_tree() -> None:
    architecture = _section("Architecture")
    block = architecture[architecture.index("Source layout:") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    named = set(re.findall(r"([a-z0-9_]+(?:\.py|/))", block))
    actual = {
        p.name + "/"
        for p in PACKAGE.iterdir()
        if p.is_dir() and p.name != "__pycache__" and not p.name.endswith(".egg-info")
    } | {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    top = {"src/", "courierflow/", "bench/", "tests/"}
    # a subfolder or module named inside a package's row (base.py, lambda_service/, ...)
    # must exist somewhere below the package
    inner = named - actual - top
    missing_inner = [
        n for n in inner if not any(PACKAGE.rglob(n.rstrip("/"))) and n not in _TEST_FOLDERS
    ]
    assert not missing_inner, f"the README names what is not in src/courierflow: {missing_inner}"
    unnamed = sorted(actual - named)
    assert not unnamed, f"the README's source layout does not name: {unnamed}"


#: the tests/ row lists the test kinds
_TEST_FOLDERS = {"unit/", "integration/", "e2e/", "faults/", "data/", "events/"}


def test_the_configuration_table_names_every_variable_the_code_reads() -> None:
    table = set(VARIABLE.findall(_section("Configuration")))
    read: dict[str, str] = {}
    for path in [*_sources(), PACKAGE / "infra" / "ec2" / "bootstrap.sh"]:
        for name in VARIABLE.findall(path.read_text(encoding="utf-8")):
            read.setdefault(name, str(path.relative_to(ROOT)))
    undocumented = {name: where for name, where in read.items() if name not in table}
    assert not undocumented, f"add these to README's Configuration table: {undocumented}"
    stale = table - set(read)
    assert not stale, f"README's Configuration table names variables nothing reads: {stale}"
