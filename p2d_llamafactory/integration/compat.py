"""What the plugin needs from LLaMA-Factory, checked before anything is patched.

The plugin supports LLaMA-Factory by what it needs, not by its version string: every function it wraps must exist
with the parameters the wrapper passes on, and every list or table it edits must exist. :func:`verify` reads them
from LLaMA-Factory's source files (it imports nothing, so it can run while LLaMA-Factory is still being imported) the
first time any patched module loads; one missing or changed point refuses the plugin before any patch, naming the
point, so a process is never half-patched and never silently without P2D.
"""

import ast
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path


TESTED = "llamafactory 0.9.5 (PyPI) and LLaMA-Factory main up to commit ff6d4d1 (0.9.6.dev0)"
RANGE = (0, 9, 5), (0, 10)  # the declared dependency range: >=0.9.5,<0.10
FINETUNING_ARGUMENTS = "FinetuningArguments"


@dataclass(frozen=True)
class PatchPoint:
    """A name the plugin wraps or edits: ``module.name`` (``Class.method`` for a method). ``parameters``: the
    leading parameter names a wrapper passes on positionally (None: a list or table, not a function);
    ``defined_in``: the module that defines a function ``module`` imports by name."""

    module: str
    name: str
    parameters: tuple[str, ...] | None = None
    defined_in: str | None = None

    @property
    def symbol(self) -> str:
        return f"{self.module}.{self.name}"


PATCH_POINTS = (
    PatchPoint("llamafactory.hparams.finetuning_args", "FinetuningArguments.__post_init__", ("self",)),
    PatchPoint("llamafactory.hparams.parser", "_TRAIN_ARGS"),
    PatchPoint("llamafactory.hparams.parser", "_INFER_ARGS"),
    PatchPoint("llamafactory.hparams.parser", "_EVAL_ARGS"),
    PatchPoint("llamafactory.hparams.parser", "get_train_args", ("args",)),
    PatchPoint("llamafactory.hparams.parser", "get_infer_args", ("args",)),
    PatchPoint("llamafactory.hparams.parser", "_verify_model_args", ("model_args", "data_args", "finetuning_args")),
    PatchPoint(
        "llamafactory.model.adapter",
        "init_adapter",
        ("config", "model", "model_args", "finetuning_args", "is_trainable"),
    ),
    PatchPoint(
        "llamafactory.data.loader",
        "get_dataset",
        ("template", "model_args", "data_args", "training_args", "stage", "tokenizer", "processor"),
    ),
    PatchPoint(
        "llamafactory.data.loader",
        "_get_preprocessed_dataset",
        ("dataset", "data_args", "training_args", "stage", "template", "tokenizer", "processor", "is_eval"),
    ),
    PatchPoint(
        "llamafactory.train.tuner",
        "run_sft",
        ("model_args", "data_args", "training_args", "finetuning_args", "generating_args", "callbacks"),
        defined_in="llamafactory.train.sft.workflow",
    ),
    PatchPoint("llamafactory.extras.constants", "METHODS"),
    PatchPoint("llamafactory.extras.constants", "PEFT_METHODS"),
    PatchPoint("llamafactory.webui.locales", "LOCALES"),
    PatchPoint("llamafactory.webui.locales", "ALERTS"),
    PatchPoint("llamafactory.webui.manager", "Manager.get_base_elems", ("self",)),
    PatchPoint("llamafactory.webui.components.train", "create_train_tab", ("engine",)),
    PatchPoint("llamafactory.webui.runner", "Runner._parse_train_args", ("self", "data")),
    PatchPoint("llamafactory.webui.runner", "Runner._initialize", ("self", "data", "do_train", "from_preview")),
)


class IncompatibleLlamaFactoryError(RuntimeError):
    """The installed LLaMA-Factory lacks a patch point, or has it with other parameters."""


def _source_file(package_dir: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    path = package_dir.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, with those under a module-level ``if``/``try`` (optional definitions)."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop(0)
        found.append(node)
        if isinstance(node, ast.If | ast.Try):
            pending.extend([*node.body, *node.orelse, *getattr(node, "finalbody", [])])
    return found


def _assigned(statements: list[ast.stmt], name: str) -> ast.expr | None:
    for node in statements:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(target, ast.Name) and target.id == name for target in targets) and node.value is not None:
            return node.value
    return None


def _function(statements: list[ast.stmt], dotted: str) -> ast.FunctionDef | None:
    owner, _, name = dotted.rpartition(".")
    if owner:
        classes = [node for node in statements if isinstance(node, ast.ClassDef) and node.name == owner]
        statements = classes[0].body if classes else []
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node
    return None


def _imports(statements: list[ast.stmt], name: str) -> bool:
    return any(
        isinstance(node, ast.ImportFrom) and any((alias.asname or alias.name) == name for alias in node.names)
        for node in statements
    )


def _statements(path: Path, parsed: dict[Path, list[ast.stmt]]) -> list[ast.stmt]:
    """The module-level statements of ``path``, parsed once per check (``parsed``: the files already read)."""
    if path not in parsed:
        parsed[path] = _top_level(ast.parse(path.read_text(encoding="utf-8"), str(path))) if path.is_file() else []
    return parsed[path]


def _problem(point: PatchPoint, package_dir: Path, parsed: dict[Path, list[ast.stmt]] | None = None) -> str | None:
    """What is wrong with one patch point in the LLaMA-Factory at ``package_dir``; None when it is as needed."""
    module = point.defined_in or point.module
    path = _source_file(package_dir, point.module)
    if not path.is_file():
        return f"module `{point.module}` is missing ({path})"
    parsed = {} if parsed is None else parsed
    statements = _statements(path, parsed)
    if point.parameters is None:
        value = _assigned(statements, point.name)
        if value is None:
            return f"`{point.symbol}` is not defined"
        if point.name.endswith("_ARGS") and not (
            isinstance(value, ast.List) and any(getattr(e, "id", None) == FINETUNING_ARGUMENTS for e in value.elts)
        ):
            return f"`{point.symbol}` is not a list holding {FINETUNING_ARGUMENTS}"
        return None
    if point.defined_in is not None:
        if not _imports(statements, point.name):
            return f"`{point.symbol}` is not imported in `{point.module}`"
        path = _source_file(package_dir, module)
        statements = _statements(path, parsed)
    function = _function(statements, point.name)
    if function is None:
        return f"`{module}.{point.name}` is not defined"
    found = tuple(arg.arg for arg in [*function.args.posonlyargs, *function.args.args])
    if found[: len(point.parameters)] != point.parameters:
        return f"`{module}.{point.name}` takes ({', '.join(found)}); the plugin passes ({', '.join(point.parameters)})"
    return None


def installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llamafactory")
    except metadata.PackageNotFoundError:
        return "unknown"


def _in_range(version: str) -> bool:
    import re

    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    low, high = RANGE
    return bool(numbers) and low <= numbers < high


@cache
def verify(package_dir: str) -> None:
    """Check every patch point of the LLaMA-Factory in ``package_dir``; raises naming each broken one."""
    parsed: dict[Path, list[ast.stmt]] = {}  # each source file is read and parsed once
    problems = [p for point in PATCH_POINTS if (p := _problem(point, Path(package_dir), parsed)) is not None]
    version = installed_version()
    if problems:
        raise IncompatibleLlamaFactoryError(
            f"p2d-llamafactory cannot extend this LLaMA-Factory (llamafactory {version} at {package_dir}): "
            + "; ".join(problems)
            + f". Nothing was patched. The plugin supports {TESTED}, and later 0.9.x releases that keep these "
            "functions. Install a supported LLaMA-Factory, or set P2D_LLAMAFACTORY_DISABLE=1 to run LLaMA-Factory "
            "without the plugin."
        )
    if not _in_range(version):
        warnings.warn(
            f"p2d-llamafactory is tested with {TESTED}; found llamafactory {version}. Every patch point checked out, "
            "so the P2D extensions are active.",
            RuntimeWarning,
            stacklevel=2,
        )


def verify_loaded() -> None:
    """:func:`verify` for the LLaMA-Factory package that is being imported in this process."""
    package = sys.modules["llamafactory"]
    verify(str(Path(package.__path__[0])))
