"""hi_core's layering: each subpackage's `__init__` docstring ends with a "May import:" line naming the subpackages
its modules may import (the list may wrap), and no module imports anything else of hi_core (nor the app's `ui`).
Type-only and function-level imports count: a dependency hidden in a function is a dependency."""

import ast
import re
from pathlib import Path

import pytest

import hi_core

ROOT = Path(hi_core.__file__).parent
APP = ROOT.parent / "ui"
MAX_LINES = 400  # STYLE: a module is one concept, readable alone; split by concept past this
RULE = re.compile(r"^May import: (.+?)\.\s*$", re.M | re.S)  # the list may wrap onto several lines


def subpackages(root: Path) -> list[str]:
    return sorted(path.parent.name for path in root.glob("*/__init__.py"))


def allowed_imports(root: Path, package: str) -> set[str]:
    """The subpackages `package` may import, from its `__init__` docstring."""
    docstring = ast.get_docstring(ast.parse((root / package / "__init__.py").read_text())) or ""
    match = RULE.search(docstring)
    if match is None:
        raise AssertionError(f"hi_core/{package}/__init__.py: its docstring has no 'May import: ...' line")
    if match.group(1) == "nothing of hi_core":
        return set()
    return {name.strip().removeprefix("hi_core.") for name in match.group(1).split(",")}


def imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    module = [root.name, *path.relative_to(root).with_suffix("").parts]
    package = module[:-1]  # what `.` means in this file (an __init__'s own package, else the module's)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import name: the names are modules of that package
                    found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def violations(root: Path) -> list[str]:
    """Every import that breaks a subpackage's rule (or reaches the app), as 'file:line imports module'."""
    rules = {package: allowed_imports(root, package) for package in subpackages(root)}
    broken = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        own = parts[0] if len(parts) > 1 else None  # None: hi_core/__init__.py, __main__.py (the top may use all)
        for line, target in imported(path, root):
            names = target.split(".")
            if names[0] in ("ui", "app"):
                broken.append(f"{path.relative_to(root.parent)}:{line} imports {target} (the app)")
            if names[0] != root.name or own is None or len(names) < 2:
                continue
            if names[1] != own and names[1] not in rules[own]:
                broken.append(f"{path.relative_to(root.parent)}:{line} imports {target}")
    return broken


def test_every_subpackage_states_what_it_may_import():
    assert len(subpackages(ROOT)) >= 8
    for package in subpackages(ROOT):
        assert allowed_imports(ROOT, package) <= set(subpackages(ROOT)), package


def test_no_module_imports_past_its_subpackages_rule():
    assert violations(ROOT) == []


def test_the_rules_form_layers_without_cycles():
    rules = {package: allowed_imports(ROOT, package) for package in subpackages(ROOT)}
    order: list[str] = []
    while rules:
        ready = sorted(package for package, allowed in rules.items() if allowed <= set(order))
        assert ready, f"these subpackages' rules import each other: {sorted(rules)}"
        order += ready
        rules = {package: allowed for package, allowed in rules.items() if package not in ready}
    assert order[0] == "base"


def test_the_check_finds_an_upward_import_a_missing_rule_and_the_app(tmp_path):
    root = tmp_path / "hi_core"
    for package, rule in (("base", "nothing of hi_core"), ("model", "hi_core.base"), ("tuning", "hi_core.base,\nhi_core.model")):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f'"""What it holds.\n\nMay import: {rule}.\n"""\n')
    (root / "__init__.py").write_text("from .tuning import run\n")  # the top may import anything
    (root / "model" / "loading.py").write_text("from ..base.errors import InputError\n"
                                               "def f():\n    from ..tuning.finetune import g\n")
    (root / "base" / "errors.py").write_text("import hi_core.model.loading\nfrom ui import app\n")
    (root / "tuning" / "run.py").write_text("from ..model import loading\nfrom . import compare\n")
    assert violations(root) == [
        "hi_core/base/errors.py:1 imports hi_core.model.loading",
        "hi_core/base/errors.py:2 imports ui (the app)",
        "hi_core/model/loading.py:3 imports hi_core.tuning.finetune",
    ]
    (root / "model" / "__init__.py").write_text('"""No rule."""\n')
    with pytest.raises(AssertionError, match="no 'May import"):
        violations(root)


def test_no_module_of_the_library_or_the_app_is_over_the_size_limit():
    modules = [*ROOT.rglob("*.py"), *APP.rglob("*.py"), ROOT.parent / "app.py"]
    assert len(modules) > 80
    sizes = {str(path.relative_to(ROOT.parent)): len(path.read_text().splitlines()) for path in modules}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}
