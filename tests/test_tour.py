"""docs/tour.md and docs/architecture.md link only files that exist, and every name they attribute
to a file is defined there.

A link attributes a name when its text is that name in backticks: [`MLA.attend_absorbed`](../minillm/model/mla.py)
claims that mla.py defines the method attend_absorbed of class MLA. Other links only need their target.
"""

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "tour.md", ROOT / "docs" / "architecture.md"]
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s#]+)(?:#[^)]*)?\)")
NAME = re.compile(r"^`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`$")


def links(doc: Path) -> list[tuple[str, str]]:
    """Return (text, target) of every relative link in a Markdown file."""
    found = LINK.findall(doc.read_text(encoding="utf-8"))
    return [(text, target) for text, target in found if not re.match(r"^[a-z]+:", target)]


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Collect the top-level functions, classes and constants of a module, plus `Class.member` for each method,
    class attribute and `self.attribute` a method assigns."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(f"{node.name}.{member}" for member in class_members(node))
    return frozenset(names)


def class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members.add(item.name)
            for inner in ast.walk(item):
                if isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Store) \
                        and isinstance(inner.value, ast.Name) and inner.value.id == "self":
                    members.add(inner.attr)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
    return members


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_linked_files_exist(doc):
    targets = [target for _, target in links(doc)]
    assert targets, f"{doc.name} has no relative links"
    missing = [target for target in targets if not (doc.parent / target).exists()]
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_linked_names_defined(doc):
    undefined = []
    for text, target in links(doc):
        match = NAME.match(text)
        path = (doc.parent / target).resolve()
        if match is None or path.suffix != ".py" or not path.is_file() or match[1] == path.name:
            continue
        if match[1] not in defined_names(path):
            undefined.append(f"{match[1]} in {target}")
    assert undefined == []


def test_tour_attributes_many_names():
    """Guards the convention itself: if the tour stopped writing names as link text, the check
    above would pass on nothing."""
    attributed = [text for text, target in links(DOCS[0])
                  if NAME.match(text) and target.endswith(".py") and text.strip("`") != Path(target).name]
    assert len(attributed) >= 30


def test_defined_names_sees_methods():
    names = defined_names(ROOT / "minillm" / "model" / "mla.py")
    assert "MLA.attend_absorbed" in names
    assert "MLA.trace" in names
    assert "attention_entropy" in names
    assert "MLA.no_such_method" not in names
