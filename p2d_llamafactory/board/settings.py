"""The P2D settings of LLaMA-Board: their widgets' defaults, the ``p2d_*`` keys they become, validation."""

import os
from dataclasses import dataclass
from typing import Any

from ..data.prompts import BUILTIN_STYLES
from ..hparams import DEFAULT_HEAD_MODULES, HEAD_MODULES, P2DArguments, applicable, default_of, p2d_fields, uses_p2d
from ..methods import DATA_SELECTIONS, HEAD_SELECTIONS, ICL_SCORINGS


# the accordion's groups, from each key's concern (hparams.CONCERNS)
_GROUPS = {"heads": "heads", "proxy": "heads", "adaptation": "adaptation", "selection": "data", "aer": "data"}
_GROUPS["probing"] = "icl"


@dataclass(frozen=True)
class BoardSetting:
    """One widget of the P2D accordion; its element name is the ``p2d_*`` key it sets. Its default and group
    come from the key's field in P2DArguments."""

    key: str
    kind: str  # "number", "integer", "choice", "multichoice", "text"
    choices: tuple[str, ...] = ()

    @property
    def default(self) -> Any:
        """The widget value of the key's declared default (None: an empty text, the default modules, 0 = off)."""
        value = default_of(self.key)
        if value is None:
            return {"multichoice": DEFAULT_HEAD_MODULES, "integer": 0}.get(self.kind, "")
        return value

    @property
    def group(self) -> str:
        """heads: the head set (stage I); adaptation: the slices that train (stage III, p2d_heads runs only);
        data: data selection (stage II) and AER; icl: probing."""
        concern = next(f.metadata["concern"] for f in p2d_fields() if f.name == self.key)
        return _GROUPS[concern]


SETTINGS = (
    BoardSetting("p2d_head_ratio", "number"),
    BoardSetting("p2d_head_modules", "multichoice", HEAD_MODULES),
    BoardSetting("p2d_head_selection", "choice", HEAD_SELECTIONS),
    BoardSetting("p2d_fhi_samples", "integer"),
    BoardSetting("p2d_fhi_steps", "integer"),
    BoardSetting("p2d_heads_file", "text"),
    BoardSetting("p2d_head_lr_scale", "number"),
    BoardSetting("p2d_data_selection", "choice", DATA_SELECTIONS),
    BoardSetting("p2d_data_ratio", "number"),
    BoardSetting("p2d_icl_scoring", "choice", ICL_SCORINGS),
    BoardSetting("p2d_icl_instruction", "choice", ("", *BUILTIN_STYLES)),  # "": auto
    BoardSetting("p2d_aer_estimate_steps", "integer"),
)
KEYS = tuple(setting.key for setting in SETTINGS)


class BoardValueError(ValueError):
    """A P2D value typed into LLaMA-Board is invalid; ``kind`` selects the localized alert."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _convert(setting: BoardSetting, value: Any) -> Any:
    """Widget value -> the YAML value; numbers must parse, an empty text stays "" (the key is left out)."""
    if setting.kind in ("number", "integer"):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BoardValueError("invalid", f"`{setting.key}` must be a number; got an empty field.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BoardValueError("invalid", f"`{setting.key}` must be a number; got {value!r}.") from None
        if setting.kind == "integer":
            if number != int(number):
                raise BoardValueError("invalid", f"`{setting.key}` must be a whole number; got {value!r}.")
            return int(number)
        return number
    if setting.kind == "multichoice":
        return ",".join(value) if value else ""
    return value.strip() if isinstance(value, str) else value


def settings_to_args(values: dict[str, Any], finetuning_type: str) -> dict[str, Any]:
    """The ``p2d_*`` keys a Train-tab run gets from the accordion's ``values`` (key -> widget value): none for a run
    that uses no P2D feature, else every key that applies to it (``hparams.applicable``, the rule the YAML path's
    warnings use). Empty texts are left out (LLaMA-Factory's command drops them too), but an empty module choice
    stays, for validation to refuse; ``p2d_aer_estimate_steps`` 0 means off."""
    converted = {setting.key: _convert(setting, values[setting.key]) for setting in SETTINGS}
    if not converted.get("p2d_aer_estimate_steps"):
        converted.pop("p2d_aer_estimate_steps", None)
    given = {key: value for key, value in converted.items() if value not in ("", None)}
    if not uses_p2d(given, finetuning_type):
        return {}
    reasons = applicable(given, finetuning_type)
    return {
        s.key: converted[s.key]
        for s in SETTINGS
        if s.key in converted
        and reasons[s.key] is None
        and (converted[s.key] not in ("", None) or s.kind == "multichoice")  # an empty module choice: an error
    }


def validate_args(args: dict[str, Any]) -> None:
    """Raise BoardValueError naming the key and the allowed values, with the checks of the YAML path."""
    if not args:
        return
    if "p2d_head_modules" in args and not args["p2d_head_modules"]:
        raise BoardValueError("invalid", f"`p2d_head_modules` needs at least one of {', '.join(HEAD_MODULES)}.")
    heads_file = args.get("p2d_heads_file")
    if heads_file and not os.path.isfile(heads_file):
        raise BoardValueError("heads_file", heads_file)
    try:
        P2DArguments(**args)
    except (TypeError, ValueError) as err:
        raise BoardValueError("invalid", str(err)) from None
