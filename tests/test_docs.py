"""The README documents what the code declares: every p2d_* key and every method name of the one table."""

import re
from pathlib import Path

from p2d_llamafactory import methods
from p2d_llamafactory.hparams import p2d_keys


README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_p2d_key_is_in_a_readme_key_table():
    first_cells = re.findall(r"^\| (`p2d_[^|]*)\|", README, flags=re.MULTILINE)
    documented = {key for cell in first_cells for key in re.findall(r"`(p2d_[a-z0-9_]+)[`:]", cell)}
    assert set(p2d_keys()) <= documented, sorted(set(p2d_keys()) - documented)
    assert documented <= set(p2d_keys()), sorted(documented - set(p2d_keys()))  # no stale key


def test_every_method_value_is_named_in_the_readme():
    values = [*methods.DATA_SELECTIONS, *methods.HEAD_SELECTIONS, *methods.METRIC_CHOICES, *methods.ICL_SCORINGS]
    missing = [value for value in values if f"`{value}`" not in README and f"{value} |" not in README]
    assert not missing, missing
