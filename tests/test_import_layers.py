"""Layers point one way: the contract at the bottom, the tiers above it, evaluation, the CLI and the
bench on top. Read from the source with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "memefly"
TIERS = {"export", "serving", "gateway", "infra"}
TOP = {"evaluation", "bench", "cli"}
PACKAGES = {CONTRACT, *TIERS, *TOP}
MAY_IMPORT = {
    CONTRACT: set(),
    **{tier: {CONTRACT} for tier in TIERS},
    "evaluation": {CONTRACT, "export", "gateway"},
    "bench": {CONTRACT, "export", "serving", "gateway", "evaluation"},
    "cli": {CONTRACT, *TIERS, "evaluation"},
}


def project_imports(path: Path) -> set[str]:
    """The modules of this project that `path` imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in project_imports(path):
                imported = module.split(".")[0]
                if imported != package and imported not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_contract_module_imports_nothing_of_the_project() -> None:
    assert project_imports(ROOT / "memefly" / "contract.py") == set()


def test_the_checker_sees_a_lazy_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from gateway.captioner import ModelSession\n    import export.train\n")
    assert project_imports(module) == {"gateway.captioner", "export.train"}
