"""The documents: the README stays a user's document, the contract names every wire field.

Pure file reads, no I/O beyond the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SCHEMAS = sorted((ROOT / "schemas" / "json").glob("*.json"))

# [text](target) and [text](target "title"); images too. Reference-style links are not used.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HISTORY = re.compile(r"\b(session [1-9]\b|this session|last session)", re.IGNORECASE)


def _property_names(schema: object) -> set[str]:
    """Every name under a `properties` keyword, at any depth."""
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            names |= _property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= _property_names(item)
    return names


def _without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def test_there_are_schemas_and_docs():
    assert SCHEMAS, "schemas/json/ holds no schema"
    names = {path.name for path in DOCS}
    assert {"contract.md", "design.md", "performance.md"} <= names


@pytest.mark.parametrize("schema_path", SCHEMAS, ids=lambda p: p.name)
def test_the_contract_names_every_field_of_every_schema(schema_path: Path):
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    names = _property_names(json.loads(schema_path.read_text(encoding="utf-8")))
    assert names, f"{schema_path.name} has no properties"
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", contract))
    assert not missing, f"docs/contract.md does not mention {missing} of {schema_path.name}"


def test_the_contract_names_every_topic():
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    topics = [p.name.removesuffix(".schema.json") for p in SCHEMAS]
    assert [t for t in topics if f"`{t}`" not in contract] == []


def test_the_contract_names_every_environment_variable():
    sources = sorted(ROOT.glob("pipeline/**/settings.py"))
    assert sources, "no settings module found"
    variables = set()
    for source in sources:
        variables |= set(re.findall(r'validation_alias="([A-Z][A-Z0-9_]+)"', source.read_text()))
    assert variables
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    assert sorted(v for v in variables if v not in contract) == []
    assert sorted(v for v in variables if v not in readme) == []


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_history_in_the_documents(path: Path):
    found = _HISTORY.findall(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name} tells history ({found}); history lives in git log"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_files_that_exist(path: Path):
    broken = []
    for target in _LINK.findall(_without_code_blocks(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor of the same page
        relative = target.split("#", 1)[0]
        if not (path.parent / relative).resolve().exists():
            broken.append(target)
    assert not broken, f"{path.name} links to missing files: {broken}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_links_stay_inside_the_repository(path: Path):
    for target in _LINK.findall(_without_code_blocks(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
