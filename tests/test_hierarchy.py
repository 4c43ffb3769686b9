import json

import numpy as np
import pytest

from neoseg.core.hierarchy import UNKNOWN, Hierarchy, builtin, builtin_names, resolve

DRAWEM = builtin("dhcp-drawem9")


def test_default_has_the_eleven_channels_of_the_spec():
    assert DRAWEM.names == ["unlabelled", "csf", "cgm", "wm", "background", "ventricles", "cerebellum", "dgm",
                            "brainstem", "hippocampi_amygdala", "tcv"]
    assert [DRAWEM.channels[i].value for i in range(11)] == list(range(11))
    assert DRAWEM.sibling_groups == [(10, [2, 3, 7])]
    assert "dhcp-drawem9" in builtin_names()


def test_encoding_of_a_fully_labelled_voxel_fills_the_parent():
    t = DRAWEM.encode(np.array([2, 3, 7, 9, 0]))  # cgm, wm, dgm, hippocampi, unlabelled
    tcv, cgm, wm, dgm, hip = 10, 2, 3, 7, 9
    assert t[:, 0].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert t[tcv].tolist() == [1, 1, 1, 0, 0]  # hippocampi/amygdala are not part of TCV
    assert t[hip].tolist() == [0, 0, 0, 1, 0]
    assert t[0].tolist() == [0, 0, 0, 0, 1]
    assert not (t == UNKNOWN).any()
    assert t[cgm].tolist() == [1, 0, 0, 0, 0] and t[wm].tolist() == [0, 1, 0, 0, 0] and t[dgm].tolist() == [0, 0, 1, 0, 0]


def test_partial_label_makes_children_unknown_inside_and_known_negative_outside():
    labels = np.array([[10, 10], [1, 9]])  # TCV-only voxels, then csf and hippocampi
    t = DRAWEM.encode(labels)
    for child in (2, 3, 7):
        assert t[child].tolist() == [[UNKNOWN, UNKNOWN], [0, 0]]
    assert t[10].tolist() == [[1, 1], [0, 0]]  # the parent itself is always observed
    assert t[1].tolist() == [[0, 0], [1, 0]]


def test_coarsen_maps_children_to_parent_and_leaves_the_rest():
    labels = np.arange(10, dtype=np.uint8)
    assert DRAWEM.coarsen(labels).tolist() == [0, 1, 10, 10, 4, 5, 6, 10, 8, 9]
    assert DRAWEM.coarsen(labels).dtype == np.uint8


def test_unknown_label_value_is_a_clear_error():
    with pytest.raises(ValueError, match="outside"):
        DRAWEM.encode(np.array([1, 11, 2]))
    lobes = Hierarchy.from_dict(THREE_LEVEL)  # values 0-3, 10, 21-23: 5 is named by no channel
    with pytest.raises(ValueError, match=r"values \[5\] that hierarchy 'lobes' does not name"):
        lobes.encode(np.array([1, 5, 2]))


def test_masks_use_per_channel_thresholds():
    probs = np.zeros((11, 2))
    probs[1] = [0.4, 0.6]
    probs[2] = [0.4, 0.6]
    thresholds = np.full(11, 0.5)
    thresholds[2] = 0.3
    m = DRAWEM.masks(probs, thresholds)
    assert m[1].tolist() == [0, 1] and m[2].tolist() == [1, 1] and m.dtype == np.uint8


def test_to_labels_descends_from_the_best_root_to_the_best_child():
    probs = np.zeros((11, 3))
    probs[10] = [0.9, 0.9, 0.2]  # tcv wins at voxels 0 and 1
    probs[1] = [0.1, 0.1, 0.8]  # csf wins at voxel 2
    probs[3] = [0.7, 0.1, 0.99]  # wm: best child at voxel 0; at voxel 2 ignored (tcv not chosen)
    probs[7] = [0.2, 0.3, 0.0]  # dgm: best child at voxel 1
    assert DRAWEM.to_labels(probs).tolist() == [3, 7, 1]
    # channel axis anywhere
    assert DRAWEM.to_labels(np.moveaxis(probs[:, None, :], 0, -1), axis=-1).tolist() == [[3, 7, 1]]


THREE_LEVEL = {
    "name": "lobes",
    "channels": [
        {"name": "outside", "value": 0},
        {"name": "csf", "value": 1},
        {"name": "frontal", "value": 21}, {"name": "temporal", "values": [22, 23]},
        {"name": "cgm", "value": 2, "children": ["frontal", "temporal"]},
        {"name": "wm", "value": 3},
        {"name": "tcv", "value": 10, "children": ["cgm", "wm"]},
    ],
}


def test_three_level_hierarchy_needs_no_code_change(tmp_path):
    path = tmp_path / "lobes.json"
    path.write_text(json.dumps(THREE_LEVEL))
    h = resolve(path)
    f, t, cgm, wm, tcv = (h.index(n) for n in ("frontal", "temporal", "cgm", "wm", "tcv"))
    assert h.sibling_groups == [(tcv, [cgm, wm]), (cgm, [f, t])]
    assert h.ancestors(f) == [cgm, tcv] and h.descendants(tcv) == [cgm, f, t, wm]
    # annotated as cgm only: lobes unknown, cgm and tcv present, wm absent
    enc = h.encode(np.array([2, 23, 10]))
    assert enc[:, 0].tolist() == [0, 0, UNKNOWN, UNKNOWN, 1, 0, 1]
    assert enc[:, 1].tolist() == [0, 0, 0, 1, 1, 0, 1]  # second value of 'temporal'
    assert enc[:, 2].tolist() == [0, 0, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, 1]
    assert h.coarsen(np.array([21, 23, 3, 1])).tolist() == [10, 10, 10, 1]
    assert h.coarsen(np.array([21, 23, 3, 1]), parents=["cgm"]).tolist() == [2, 2, 3, 1]
    probs = np.zeros((7, 1))
    probs[[tcv, cgm, t], 0] = 0.9
    assert h.to_labels(probs).tolist() == [22]  # the canonical (first) value of 'temporal'
    assert Hierarchy.from_json(h.to_json()) == h


@pytest.mark.parametrize("channels, message", [
    ([{"name": "a", "value": 1}, {"name": "a", "value": 2}], "appears twice"),
    ([{"name": "a", "value": 1}, {"name": "b", "value": 1}], "belongs to both"),
    ([{"name": "a", "value": 1, "children": ["zz"]}], "unknown child 'zz'"),
    ([{"name": "a", "value": 1, "children": ["b"]}, {"name": "b", "value": 2, "children": ["a"]}], "two parents|cycle"),
    ([{"name": "a", "value": 1, "children": ["c"]}, {"name": "b", "value": 2, "children": ["c"]},
      {"name": "c", "value": 3}], "two parents"),
    ([{"name": "a"}], "no label value"),
    ([{"name": "a", "value": -1}], "integers"),
    ([{"name": "a", "value": 1, "colour": "red"}], "unknown keys"),
    ([], "non-empty"),
])
def test_invalid_hierarchies_are_rejected(channels, message):
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_dict({"name": "bad", "channels": channels})


def test_cycle_is_named():
    spec = {"channels": [{"name": "a", "value": 1, "children": ["b"]}, {"name": "b", "value": 2, "children": ["c"]},
                         {"name": "c", "value": 3, "children": ["a"]}]}
    with pytest.raises(ValueError, match="cycle"):
        Hierarchy.from_dict(spec)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve(bad)
