"""The tree's layering: run-time code below the offline tools, every import pointing down (or sideways)."""

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "p2d_llamafactory"
# lowest first; a module may import its own layer and the layers below it
LAYERS = (
    ("io", "files", "methods", "hparams", "distributed", "tokens", "models"),
    ("heads",),
    ("data",),
    ("adapter",),
    ("report",),
    ("checks",),
    ("pipeline",),  # the stages written once; api and integration adapt it
    ("api",),  # the Python API: stages I-III and the AER, outside the CLI
    ("assets",),
    ("board",),
    ("integration", "_autoload", "cli", "__init__"),
    ("experiments",),
)


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _module_or_package(name: str) -> str:
    """``from .. import hparams`` imports a module; ``from . import DISABLE_ENV`` a name of the package."""
    return name if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else "__init__"


def _imports(path: Path) -> list[str]:
    """Top-level package names this module imports from p2d_llamafactory (relative or absolute)."""
    relative = path.relative_to(PACKAGE).parts
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(relative[:-1])[: len(relative) - node.level]
            parts = base + (node.module.split(".") if node.module else [])
            found += parts[:1] or [_module_or_package(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("p2d_llamafactory."):
            found.append(node.module.split(".")[1])
    return found


def test_every_import_points_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        own = parts[0].removesuffix(".py")
        for target in _imports(path):
            target = target.removesuffix(".py")
            if _layer(target) > _layer(own):
                upward.append(f"{'/'.join(parts)} imports {target}")
    assert not upward, upward


def test_the_layers_cover_the_tree():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops == {name for names in LAYERS for name in names}


def _imports_llamafactory(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        if any(name == "llamafactory" or name.startswith("llamafactory.") for name in names):
            return True
    return False


def test_only_the_integration_package_imports_llamafactory():
    outside = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "integration" and _imports_llamafactory(path)
    ]
    assert not outside, outside
    assert _imports_llamafactory(PACKAGE / "integration" / "hparams.py")  # the check sees an import where there is one
