"""neoseg-train's default atlas recipe (``--atlas auto``, train/recipes.py): where fully and
partially labelled sessions train together with a partial-label loss, propagation with one fully
labelled subject trained as one model (``members`` 1, TrainConfig's default) and the atlas-to-scan
pairs with more; nothing elsewhere. With ``--members auto``: tests/test_members.py."""

import json

import pytest

from neoseg.train.config import TrainConfig
from neoseg.train.recipes import dataset_split, resolve_recipe


def config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, full_fraction=0.25,
                device="cpu", atlas="auto")
    return TrainConfig(**{**base, **kw})


def test_the_cpu_profile_defaults_to_auto_and_the_paper_profile_to_none():
    assert TrainConfig.profile("cpu").atlas == "auto"
    assert TrainConfig.profile("paper").atlas == "none"  # the paper's protocol, as the runner's paper profile
    assert TrainConfig().atlas == "none"


@pytest.mark.parametrize("kw, mode", [
    ({}, "propagate"),  # IUC on 1 fully labelled and 3 partially labelled training subjects
    ({"loss": "labelset"}, "propagate"),
    ({"loss": "bce"}, "none"),  # the supervised baseline trains on the fully labelled subjects only
    ({"full_fraction": 1.0}, "none"),  # nothing partial to propagate into
    ({"full_fraction": 0.5}, "pairs"),  # two fully labelled subjects: the atlas-to-scan pairs
    ({"full_fraction": 0.5, "loss": "bce"}, "none"),
])
def test_auto_resolves_by_the_fully_labelled_subjects_where_there_is_something_to_register(tiny_dataset, kw, mode):
    cfg = config(tiny_dataset, **kw)
    assert resolve_recipe(cfg, dataset_split(cfg)).atlas == mode


def test_an_explicit_choice_is_kept(tiny_dataset):
    cfg = config(tiny_dataset, atlas="none")
    assert resolve_recipe(cfg, dataset_split(cfg)).atlas == "none"


def test_runs_written_before_the_atlas_recipes_read_as_none():
    raw = json.loads(TrainConfig.profile("cpu").to_json())
    del raw["atlas"]
    assert TrainConfig.from_json(json.dumps(raw)).atlas == "none"
