"""The head-set file ``p2d_heads.json``: which heads were selected, how, and every head's score."""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import HEADS_FILE, all_finite, read_json_file
from ..hparams import same_identity
from ..io import atomic_write_json
from .layout import AttentionLayout


FORMAT_VERSION = 1


@dataclass
class HeadSet:
    """Selected attention heads of one model, with the scores and settings that produced them."""

    model: str
    shape: dict[str, int]
    method: str
    seed: int
    ratio: float
    scores: list[list[float]]
    selected: list[tuple[int, int]]
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    proxy_loss: list[float] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.selected = sorted((int(layer), int(head)) for layer, head in self.selected)

    def by_layer(self) -> dict[int, list[int]]:
        """Selected heads grouped by layer index."""
        grouped: dict[int, list[int]] = {}
        for layer, head in self.selected:
            grouped.setdefault(layer, []).append(head)
        return grouped

    def check_shape(self, layout: AttentionLayout, source: str = "p2d_heads_file") -> None:
        """Raise if this head set was made for a model of another attention shape."""
        if self.shape != layout.shape():
            raise ValueError(
                f"`{source}` holds heads of a model shaped {self.shape} ({self.model}); this model is shaped "
                f"{layout.shape()}."
            )
        for layer, head in self.selected:
            if not (0 <= layer < layout.num_layers and 0 <= head < layout.num_heads):
                raise ValueError(f"`{source}` selects head ({layer}, {head}), outside this model's layout.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["selected"] = [list(pair) for pair in self.selected]
        data["num_selected"] = len(self.selected)
        return data

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, source: str = "p2d_heads_file") -> "HeadSet":
        """Read and validate a head-set file: anything that is not one (not a regular file, malformed or
        inconsistent fields, a ``selected`` that is not its scores' top k) raises naming ``source`` (the key, or
        the adapter it belongs to), the path and what is wrong."""
        where = f"`{source}` {str(path)!r}"
        if Path(path).is_dir():
            raise ValueError(f"{where} is a directory; give the {HEADS_FILE} file of a P2D run.")
        data = read_json_file(path, f"`{source}`")
        missing = {"shape", "selected"} - set(data) if isinstance(data, dict) else {"shape", "selected"}
        if missing:
            raise ValueError(f"{where} is not a P2D head set (missing {sorted(missing)}).")
        data["selected"] = _selected_pairs(data["selected"], where)
        defaults = {"model": "", "method": "unknown", "seed": 0, "ratio": 0.0, "scores": []}
        fields = {**defaults, **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}}
        _check_fields(fields, where)
        return cls(**fields)


_FIELD_TYPES = {
    "model": str,
    "method": str,
    "seed": int,
    "ratio": (int, float),
    "scores": list,
    "settings": dict,
    "timings": dict,
    "proxy_loss": list,
    "format_version": int,
}
_SHAPE_KEYS = ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")


def _check_fields(fields: dict[str, Any], where: str) -> None:
    """Types, finite numbers, and the counts a head set's fields must agree on."""
    for key, kind in _FIELD_TYPES.items():
        value = fields.get(key)
        if key in fields and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"{where}: `{key}` must be a {getattr(kind, '__name__', 'number')}; got {value!r:.60}.")
    shape = fields["shape"]
    if not (isinstance(shape, dict) and all(_is_index(shape.get(k)) and shape[k] > 0 for k in _SHAPE_KEYS)):
        raise ValueError(
            f"{where}: `shape` must give {', '.join(_SHAPE_KEYS)} as positive integers; got {shape!r:.80}."
        )
    if not all_finite([fields["ratio"], fields["scores"], fields.get("timings", {}), fields.get("proxy_loss", [])]):
        raise ValueError(f"{where} holds a number that is not finite (NaN or infinity).")
    layers, heads = shape["num_layers"], shape["num_heads"]
    outside = [list(p) for p in fields["selected"] if p[0] >= layers or p[1] >= heads]
    if outside:
        raise ValueError(f"{where}: `selected` names heads {outside[:3]} outside its own shape ({layers} x {heads}).")
    if not 0 <= fields["ratio"] <= 1:
        raise ValueError(f"{where}: `ratio` must be in [0, 1]; got {fields['ratio']!r}.")
    scores = fields["scores"]
    if not scores:
        return
    if len(scores) != layers or any(not isinstance(row, list) or len(row) != heads for row in scores):
        raise ValueError(f"{where}: `scores` must be {layers} rows of {heads} numbers, one per head.")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for row in scores for v in row):
        raise ValueError(f"{where}: `scores` must hold numbers only.")
    k = len(fields["selected"])
    top = _top_k(scores, k)
    if top is not None and top != sorted(fields["selected"]):
        raise ValueError(
            f"{where}: `selected` is not the top {k} of its own `scores` (the file was edited?); keep the file a run "
            "wrote, or give a head set without scores."
        )


def _top_k(scores: list[list[float]], k: int) -> list[tuple[int, int]] | None:
    """The k best-scored heads, or None where a tie across the cut leaves them open."""
    ranked = sorted(((v, (i, j)) for i, row in enumerate(scores) for j, v in enumerate(row)), key=lambda x: -x[0])
    if k < len(ranked) and ranked[k - 1][0] == ranked[k][0]:
        return None
    return sorted(pair for _, pair in ranked[:k])


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _selected_pairs(selected: Any, where: str) -> list[tuple[int, int]]:
    """``selected`` as a non-empty list of distinct [layer, head] pairs of non-negative integers."""
    expected = 'a non-empty list of distinct [layer, head] pairs of integers, e.g. "selected": [[0, 3], [5, 1]]'
    if not isinstance(selected, list) or not selected:
        raise ValueError(f"{where}: `selected` must be {expected}; got {selected!r:.80}.")
    pairs = []
    for item in selected:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_index(v) for v in item)):
            raise ValueError(f"{where}: `selected` must be {expected}; found the entry {item!r:.40}.")
        pairs.append((item[0], item[1]))
    duplicates = sorted({pair for pair in pairs if pairs.count(pair) > 1})
    if duplicates:
        raise ValueError(f"{where}: `selected` must be {expected}; {[list(p) for p in duplicates]} repeat.")
    return pairs


def reusable_head_set(path: Path, settings: dict[str, Any], layout: AttentionLayout, identity: str) -> HeadSet | None:
    """The head set an identical earlier run left at ``path`` (stage I: ``identity`` "heads"; LoFiT's step 1:
    "lofit"), if any: same settings (keys declared since it was written read as their defaults) and model shape."""
    if not path.is_file():
        return None
    try:
        previous = HeadSet.load(path)
    except ValueError:
        return None
    if not same_identity(previous.settings, settings, identity) or previous.shape != layout.shape():
        return None
    return previous
