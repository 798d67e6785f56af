"""Layers import downward only (issue 10 item 5): core imports nothing from scorebank;
stores only core; analysis never pipeline or cli; pipeline never cli (its existing uses of
analysis stay); cli anything.  Every import statement of every module counts, also inside
functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "stores", "analysis", "pipeline", "cli")
#: what each layer must not import
FORBIDDEN = {
    "core": {"stores", "analysis", "pipeline", "cli"},
    "stores": {"analysis", "pipeline", "cli"},
    "analysis": {"pipeline", "cli"},
    "pipeline": {"cli"},  # pipeline -> analysis: existing uses (easy-hard, retrain) are allowed
    "cli": set(),
}
#: (module, imported layer) pairs known to import upward, to be removed; must stay empty
KNOWN: set[tuple[str, str]] = set()


def imported_layers(path: Path, layer: str) -> list[tuple[int, str]]:
    """``[(line, layer)]`` of every scorebank layer ``path`` (in package ``layer``) imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                names = [f"scorebank.{layer}.{node.module or ''}" if node.level == 1 else "scorebank."
                         + (node.module or "")]
            elif node.module:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                         if node.module == "scorebank" else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "scorebank" and len(parts) > 1 and parts[1] in LAYERS:
                out.append((node.lineno, parts[1]))
    return out


def upward_imports() -> list[str]:
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            module = str(path.relative_to(ROOT))
            for line, target in imported_layers(path, layer):
                if target in FORBIDDEN[layer] and (module, target) not in KNOWN:
                    found.append(f"{module}:{line} imports scorebank.{target}")
    return found


def test_no_layer_imports_upward():
    assert upward_imports() == []


def test_the_checker_finds_upward_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from scorebank.pipeline.config import resolve_config\n"
                   "    import scorebank.cli.main\n    from scorebank import analysis\n"
                   "    from scorebank.core.errors import ScorebankError\n")
    assert imported_layers(bad, "stores") == [(4, "pipeline"), (5, "cli"), (6, "analysis"), (7, "core")]


def test_known_exceptions_are_none():
    assert KNOWN == set()
