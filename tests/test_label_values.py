"""Label values above 255 (and above 32767) survive every stage unchanged, unnamed values are
refused before training, and thresholds stay inside [1e-6, 1 - 1e-6]."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.core.hierarchy import Hierarchy, builtin
from neoseg.core.labels import as_label_map, label_dtype, present_values
from neoseg.core.thresholds import check_thresholds
from neoseg.data.dhcp import find_sessions
from neoseg.runtime.model import ModelInfo, parse_thresholds
from neoseg.train.config import TrainConfig

from conftest import write_dataset

runner = CliRunner()

# Phantom label (conftest) -> a FreeSurfer-like value. 300 and 556 wrap to 44 (dgm) in uint8, 1044
# to 20; 40000 and 33000 exceed int16. "other" has two values, so 556 also tests a list.
BIG = {0: 0, 1: 300, 2: 1044, 3: 40000, 4: 4, 5: 556, 6: 556, 7: 44, 8: 556, 9: 556}
BIG_HIERARCHY = {"name": "big-values", "channels": [
    {"name": "outside", "value": 0}, {"name": "csf", "value": 300}, {"name": "nonbrain", "value": 4},
    {"name": "other", "values": [556, 557]}, {"name": "cgm", "value": 1044}, {"name": "wm", "value": 40000},
    {"name": "dgm", "value": 44}, {"name": "tcv", "value": 33000, "children": ["cgm", "wm", "dgm"]}]}
STORED_AS = [np.uint16, np.int32, np.float32]  # label file types, by subject in turn (FreeSurfer: int32)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny phantom dataset with its labels renamed to BIG, and the hierarchy file."""
    root = write_dataset(tmp_path_factory.mktemp("big") / "data")
    lut = np.array([BIG[v] for v in range(10)], np.int64)
    for i, session in enumerate(find_sessions(root)):
        img = nib.load(session.labels)
        data = lut[np.asarray(img.dataobj)].astype(STORED_AS[i % len(STORED_AS)])
        out = nib.Nifti1Image(data, img.affine)
        out.header.set_data_dtype(data.dtype)
        nib.save(out, session.labels)
    hierarchy = root.parent / "big.json"
    hierarchy.write_text(json.dumps(BIG_HIERARCHY))
    return root, hierarchy


def file_labels(path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj).astype(np.int64)


# ---- stages, one by one --------------------------------------------------------------------------
def test_label_maps_keep_their_values_in_the_smallest_type():
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16 and label_dtype(65535) == np.uint16
    values = np.array([0, 44, 300, 40000], np.int32)
    out = as_label_map(values, "x.nii.gz")
    assert out.dtype == np.uint16 and out.tolist() == [0, 44, 300, 40000]
    assert as_label_map(np.array([0.0, 300.0], np.float32)).tolist() == [0, 300]
    assert as_label_map(np.array([0, 9], np.int16)).dtype == np.uint8
    for bad, message in ((np.array([0, -1], np.int16), "label value -1 is outside 0..65535"),
                         (np.array([0, 70000], np.int32), "label value 70000 is outside 0..65535"),
                         (np.array([0.0, 2.5]), "non-integer values such as 2.5"),
                         (np.array([0.0, np.nan]), "NaN")):
        with pytest.raises(ValueError, match=message) as e:
            as_label_map(bad, "sub-1_dseg.nii.gz")
        assert str(e.value).startswith("sub-1_dseg.nii.gz: ")
    assert present_values(np.array([300, 0, 40000, 300], np.uint16)) == [0, 300, 40000]


def test_coarsening_to_a_parent_above_255_does_not_wrap():
    h = Hierarchy.from_dict(BIG_HIERARCHY)
    assert h.label_dtype == np.uint16
    # a uint8 map (its own values all < 256) coarsened to tcv = 33000
    coarse = h.coarsen(np.array([0, 44, 4], np.uint8))
    assert coarse.tolist() == [0, 33000, 4] and coarse.dtype == np.uint16
    assert h.coarsen(np.array([1044, 40000, 300, 556], np.uint16)).tolist() == [33000, 33000, 300, 556]
    with pytest.raises(ValueError, match="outside"):
        h.coarsen(np.array([40001], np.uint16))


def test_slice_cache_and_coarsened_targets_keep_every_value(big_dataset, tmp_path):
    from neoseg.train.dataset import SliceDataset
    from neoseg.train.volumes import VolumeCache

    root, hierarchy_file = big_dataset
    h = Hierarchy.load(hierarchy_file)
    sessions = find_sessions(root)[:3]  # stored as uint16, int32 and float32
    stacks = [VolumeCache(tmp_path, 0, 32, h).get(s) for s in sessions]
    for session, stack in zip(sessions, stacks):
        truth = file_labels(session.labels)
        assert stack.labels.dtype == np.uint16
        assert list(stack.values) == np.unique(truth).tolist() == [0, 4, 44, 300, 556, 1044, 40000]
        # every labelled voxel is in the stack (24^3, padded to 32^2 slices): same count of every value
        assert np.array_equal(np.bincount(stack.labels.ravel(), minlength=40001)[1:], np.bincount(truth.ravel())[1:])
    data = SliceDataset(stacks, h, partial=[True, False, False])
    partial = np.concatenate([data[i][1].numpy()[:, None] for i in range(len(stacks[0].labels))], axis=1)
    labels = np.asarray(stacks[0].labels, np.int64)
    inside = np.isin(labels, [1044, 40000, 44])
    assert (partial[h.index("tcv")] == inside).all()
    for child in ("cgm", "wm", "dgm"):  # unknown inside the parent, absent outside it
        assert (partial[h.index(child)][inside] == 2).all() and (partial[h.index(child)][~inside] == 0).all()
    assert (partial[h.index("csf")] == (labels == 300)).all() and (partial[h.index("other")] == (labels == 556)).all()
    full = data[len(stacks[0].labels)][1].numpy()  # first slice of the fully labelled second stack
    k = data.index[len(stacks[0].labels)][1]
    second = np.asarray(stacks[1].labels[k], np.int64)
    assert (full[h.index("wm")] == (second == 40000)).all() and (full[h.index("dgm")] == (second == 44)).all()


def test_pseudo_labels_keep_values_above_255():
    from neoseg.train.baselines import correct_with_parent

    h = Hierarchy.from_dict(BIG_HIERARCHY)
    probs = np.zeros((len(h), 3), np.float32)
    probs[h.index("wm"), 0] = probs[h.index("dgm"), 1] = 1  # inside tcv: the most probable child
    partial = np.array([33000, 33000, 300], np.uint16)
    assert correct_with_parent(probs, partial, h).astype(h.label_dtype).tolist() == [40000, 44, 300]


# ---- end to end: label file -> cache -> coarsening -> checkpoint -> evaluation -> export -> infer ---
@pytest.fixture(scope="module")
def big_run(big_dataset, tmp_path_factory):
    from neoseg.train.loop import train

    root, hierarchy_file = big_dataset
    config = TrainConfig(data=str(root), hierarchy=str(hierarchy_file), slice_size=32, widths=[8, 16], epochs=4,
                         batch_size=8, full_fraction=0.25, device="cpu", prior_bias=True, lr=1e-2, thresholds=0.4)
    out = tmp_path_factory.mktemp("bigrun") / "run"
    return train(config, out, progress=False), out


@pytest.mark.slow
def test_values_above_255_and_32767_from_label_file_to_neoseg_infer(big_run, big_dataset, tmp_path):
    from neoseg.cli.export import app as export_app
    from neoseg.cli.infer import app as infer_app
    from neoseg.runtime.backends import OrtBackend
    from neoseg.train import checkpoint
    from neoseg.train.evaluate import predict_volume

    result, out = big_run
    root, hierarchy_file = big_dataset
    h = Hierarchy.load(hierarchy_file)
    # the training cache holds uint16 stacks with the file's values
    stacks = sorted((out / "cache").glob("*.labels.npy"))
    assert stacks and all(np.load(p).dtype == np.uint16 for p in stacks)
    assert all({300, 1044, 40000} <= set(json.loads(p.with_name(p.name.replace(".labels.npy", ".json"))
                                                    .read_text())["values"]) for p in stacks)
    # the checkpoint carries the hierarchy; the evaluation table read the truth with every value
    loaded = checkpoint.load(out / "best.pt")
    assert loaded.hierarchy == h and loaded.config.thresholds == 0.4
    sessions = {s.subject: s for s in find_sessions(root)}
    with (out / "evaluation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["structure"] for r in rows} == set(h.names) and rows == [
        {k: str(v) for k, v in r.items()} for r in result.rows]
    for row in rows:
        truth = file_labels(sessions[row["subject"]].labels)
        node = h.index(row["structure"])
        values = [v for i in [node, *h.descendants(node)] for v in h.channels[i].values]
        assert float(row["vol_true_ml"]) == pytest.approx(np.isin(truth, values).sum() * 8 / 1000)
    assert "wm" in result.table and "tcv" in result.table
    # export keeps the hierarchy and the training config's thresholds
    model = tmp_path / "model.onnx"
    done = runner.invoke(export_app, [str(out / "best.pt"), "-o", str(model), "--data", str(root)])
    assert done.exit_code == 0, done.output
    info = OrtBackend(model).info
    assert info.hierarchy == h and info.thresholds == (0.4,) * len(h)
    # neoseg-infer writes the values as uint16, as the torch model decodes them
    test = sessions[json.loads((out / "split.json").read_text())["test"][0]]
    image = nib.as_closest_canonical(nib.load(test.t2))
    expected = h.to_labels(predict_volume(loaded.model, np.asarray(image.dataobj, np.float32), h, 0, 32))
    assert {40000, 1044, 300} <= set(np.unique(expected).tolist())  # the model predicts the large values
    for backend, model_file in (("ort-cpu", model), ("torch-cpu", out / "best.pt")):
        folder = tmp_path / backend
        done = runner.invoke(infer_app, [str(test.t2), "-m", str(model_file), "-o", str(folder), "--backend", backend])
        assert done.exit_code == 0, done.output
        dseg = nib.load(next(folder.glob("*_desc-neoseg_dseg.nii.gz")))
        assert dseg.get_data_dtype() == np.uint16, backend
        labels = np.asarray(dseg.dataobj)
        assert set(np.unique(labels).tolist()) <= {0, 4, 44, 300, 556, 1044, 40000}
        assert np.mean(labels == expected) > 0.99, backend


@pytest.mark.slow
def test_pseudo_label_maps_keep_values_above_255(big_run, big_dataset, tmp_path):
    from neoseg.train.baselines import write_pseudo_labels
    from neoseg.train.recipes import pseudo_label_path

    _, out = big_run
    root, hierarchy_file = big_dataset
    session = find_sessions(root)[1]  # stored as int32
    write_pseudo_labels(out / "best.pt", [session], tmp_path)
    img = nib.load(pseudo_label_path(tmp_path, session))
    assert img.get_data_dtype() == np.uint16
    pseudo, truth = np.asarray(img.dataobj).astype(np.int64), file_labels(session.labels)
    inside = np.isin(truth, [1044, 40000, 44])  # tcv: the model picks the child
    assert np.isin(pseudo[inside], [1044, 40000, 44]).all() and np.array_equal(pseudo[~inside], truth[~inside])
    assert {1044, 40000} <= set(np.unique(pseudo[inside]).tolist())


# ---- unnamed values are reported before training ------------------------------------------------
def test_unnamed_label_values_are_reported_by_file_before_training(tmp_path):
    from neoseg.train.loop import train

    root = write_dataset(tmp_path / "data")
    sessions = find_sessions(root)
    for session, extra in ((sessions[1], 266), (sessions[4], 77)):  # 266 is 10 (tcv) once wrapped to uint8
        img = nib.load(session.labels)
        data = np.asarray(img.dataobj).astype(np.uint16)
        data[0, 0, :3] = extra
        nib.save(nib.Nifti1Image(data, img.affine), session.labels)
    out = tmp_path / "run"
    config = TrainConfig(data=str(root), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError) as e:
        train(config, out, progress=False)
    message = str(e.value)
    assert f"{sessions[1].labels}: 266" in message and f"{sessions[4].labels}: 77" in message
    assert "does not name" in message and "\n" not in message
    assert not (out / "metrics.csv").exists() and not (out / "last.pt").exists()


# ---- thresholds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, 1.0, 1e-7, 1 - 1e-7, -0.5, 2.0, float("nan"), float("inf"), "0.5", True])
def test_thresholds_outside_the_open_interval_are_refused(bad):
    with pytest.raises(ValueError, match=r"outside \[1e-06, 0\.999999\]"):
        check_thresholds(bad)
    with pytest.raises(ValueError, match="config thresholds"):
        TrainConfig(thresholds=bad)
    with pytest.raises(ValueError, match="outside"):
        TrainConfig(thresholds=[0.5, bad])


def test_thresholds_at_the_ends_of_the_range_are_accepted_and_counted_per_channel():
    names = ["a", "b", "c"]
    assert check_thresholds(1e-6, names) == (1e-6,) * 3
    assert check_thresholds([0.5, 1 - 1e-6, 0.3], names) == (0.5, 1 - 1e-6, 0.3)
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        check_thresholds([0.5, 0.5], names)
    assert TrainConfig.from_json(TrainConfig(thresholds=[0.3, 0.4]).to_json()).thresholds == [0.3, 0.4]
    raw = json.loads(TrainConfig().to_json())
    raw["thresholds"] = 1.0
    with pytest.raises(ValueError, match="outside"):
        TrainConfig.from_json(json.dumps(raw))
    # a config without thresholds (written before they existed) reads as 0.5
    del raw["thresholds"]
    assert TrainConfig.from_json(json.dumps(raw)).thresholds == 0.5


def test_models_refuse_thresholds_outside_the_range():
    h = builtin()
    info = dict(hierarchy=h, axis=0, slice_size=32, divisor=16, spacing=(1.0, 1.0, 1.0), architecture="unet",
                version="x", config_digest="d")
    with pytest.raises(ValueError, match="model metadata: threshold 1.0 for 'tcv' is outside"):
        ModelInfo(thresholds=(0.5,) * 10 + (1.0,), **info)
    good = ModelInfo(thresholds=(0.5,) * 11, **info)
    assert np.isfinite(good.logit_thresholds).all()
    meta = good.to_metadata()
    meta["neoseg.thresholds"] = json.dumps([0.0] * 11)
    with pytest.raises(ValueError, match=r"^old\.onnx: model metadata: threshold 0\.0 .* re-export"):
        ModelInfo.from_metadata(meta, "old.onnx")
    with pytest.raises(ValueError, match="thresholds '1'"):
        parse_thresholds("1", 11)
    assert parse_thresholds("0.999999", 11) == (0.999999,) * 11


def test_cli_threshold_errors_are_one_line_and_write_nothing(big_run, tmp_path):
    from neoseg.cli.evaluate import app as eval_app
    from neoseg.cli.export import app as export_app
    from neoseg.cli.train import app as train_app

    _, out = big_run
    model = tmp_path / "model.onnx"
    done = runner.invoke(export_app, [str(out / "best.pt"), "-o", str(model), "--thresholds", "1",
                                      "--verify-scans", "0"])
    assert done.exit_code == 2 and "outside [1e-06, 0.999999]" in done.output and len(done.output.splitlines()) == 1
    assert not model.exists()
    done = runner.invoke(eval_app, [str(out / "best.pt"), "--thresholds", "0", "-q"])
    assert done.exit_code == 2 and "outside [1e-06, 0.999999]" in done.output
    done = runner.invoke(train_app, ["--out", str(tmp_path / "run"), "--thresholds", "1.0"])
    assert done.exit_code == 2 and "config thresholds" in done.output and not (tmp_path / "run").exists()
