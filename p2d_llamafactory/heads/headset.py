"""The head-set file ``p2d_heads.json``: which heads were selected, how, and every head's score."""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, read_json
from .layout import AttentionLayout


HEADS_FILE = "p2d_heads.json"
HEATMAP_FILE = "p2d_heads.png"
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
    def load(cls, path: str | Path) -> "HeadSet":
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise ValueError(f"`p2d_heads_file` {str(path)!r} does not exist.") from None
        except ValueError as err:
            raise ValueError(f"`p2d_heads_file` {str(path)!r} is not valid JSON: {err}") from None
        missing = {"shape", "selected"} - set(data) if isinstance(data, dict) else {"shape", "selected"}
        if missing:
            raise ValueError(f"`p2d_heads_file` {str(path)!r} is not a P2D head set (missing {sorted(missing)}).")
        defaults = {"model": "", "method": "unknown", "seed": 0, "ratio": 0.0, "scores": []}
        known = set(cls.__dataclass_fields__)
        return cls(**{**defaults, **{k: v for k, v in data.items() if k in known}})
