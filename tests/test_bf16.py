"""BF16 at export: the gate pooled over whole scans, the BF16 OpenVINO model with its
full-resolution convolutions kept in FP32, and the runtime running (and checking) it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from neoseg.data.dhcp import find_sessions
from neoseg.runtime import openvino_backend
from neoseg.runtime.backends import BackendUnavailable, open_backend
from neoseg.runtime.precision import ParityRecord

ov = pytest.importorskip("openvino")
REAL_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def toy(tiny_dataset, toy_run, tmp_path_factory):
    """The toy U-Net (2 levels) of ``toy_run``, trained on 4 scans, exported with verification; 2 other scans."""
    from neoseg.export.onnx_export import export_onnx, verification_slices
    from neoseg.export.scans import Scans
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train import checkpoint

    sessions = find_sessions(tiny_dataset)
    folder = tmp_path_factory.mktemp("bf16")
    loaded = checkpoint.load(toy_run / "best.pt")
    info = info_from_checkpoint(loaded)
    scans = Scans.load(sessions[4:6], "not trained on")
    x = verification_slices([image for image, _ in scans.images], info)
    export_onnx(loaded.model, info, folder / "toy.onnx", verify_on=x)
    return folder / "toy.onnx", loaded.model, scans


class Fixed:
    """A stand-in Segmenter returning given masks, one (X, Y, Z, C) array per call."""

    def __init__(self, masks: list, names: list[str]):
        self.masks, self.info = iter(masks), SimpleNamespace(hierarchy=SimpleNamespace(names=names))

    def segment(self, image, affine, zooms):
        return SimpleNamespace(masks=next(self.masks), computed_slices=4)


def test_the_gate_pools_each_structure_over_the_scans():
    from neoseg.export.gate import runtime_parity
    from neoseg.export.scans import Scans

    names = ["big", "small"]
    ref = [np.zeros((4, 4, 8, 2), np.uint8) for _ in range(2)]
    for r in ref:
        r[:, :, :4, 0] = 1  # "big": 64 voxels a scan
        r[0, 0, 0, 1] = r[1, 0, 0, 1] = 1  # "small": 2 voxels a scan
    scan = (np.zeros((4, 4, 8)), SimpleNamespace(affine=np.eye(4), header=SimpleNamespace(get_zooms=lambda: (1,) * 3)))

    def gate(*lost):
        """The record of a candidate that loses these (scan, x, channel) voxels."""
        got = [r.copy() for r in ref]
        for i, x, c in lost:
            got[i][x, 0, 0, c] = 0
        scans = Scans([scan, scan], ("sub-a_ses-1", "sub-b_ses-1"), "held out")
        return runtime_parity(Fixed(ref, names), Fixed(got, names), scans, "test", ("conv",))

    record = gate((0, 0, 1))  # one voxel of "small" lost in the first scan only
    # pooled: |A & B| = 3 of |A| + |B| = 4 + 3; per scan it would be 2/3 in the first
    assert record.worst == "small" and record.min_dice == pytest.approx(6 / 7, abs=1e-6)
    assert (record.scans, record.voxels, record.slices, record.kept_fp32, record.differing) == (2, 4, 8, ("conv",), 1)
    assert (record.scan_keys, record.scans_from) == (("sub-a_ses-1", "sub-b_ses-1"), "held out")
    assert "pooled" in record.measured_with and "small 4 voxels, 1 differ" in record.describe()
    assert record.passed  # one voxel: below what the gate resolves
    assert ParityRecord(**json.loads(json.dumps(vars(record)))) == record  # as stored in the model
    record = gate((0, 0, 1), (1, 1, 1), (0, 0, 0))  # two voxels of "small" (Dice 0.67), one of "big"
    assert not record.passed and (record.worst, record.differing) == ("small", 2)
    record = gate((0, 0, 1), (0, 0, 0), (1, 0, 0))  # "big" 2 voxels (Dice 0.992) is resolved, "small" is not
    assert record.passed and record.worst == "big" and record.min_dice == pytest.approx(252 / 254, abs=1e-6)


def test_full_resolution_layers_are_the_same_in_openvino_and_torch(toy):
    from neoseg.export.bf16 import full_resolution
    from neoseg.export.reduced import full_resolution_layers

    onnx, model, _ = toy
    names = full_resolution(ov.Core().read_model(str(onnx)), 32)
    # first encoder stage (2), the last up-convolution, the last decoder stage (2), head
    assert len(names) == len(full_resolution_layers(model, 32)) == 6
    assert names[0].startswith("/down.0/") and names[-1].startswith("/head/")
    # two levels add the second (last) encoder stage: all 8 of this 2-level U-Net
    assert len(full_resolution(ov.Core().read_model(str(onnx)), 32, 2)) == len(full_resolution_layers(model, 32, 2)) \
        == 8


def test_only_remedies_that_keep_some_but_not_all_convolutions_are_measured(toy):
    import openvino.opset13 as ops

    from neoseg.export.bf16 import remedies
    from neoseg.export.gate import first_passing

    log = []
    kept = remedies(ov.Core().read_model(str(toy[0])), 32, log.append, "int8")
    assert list(kept) == [0, 1] and len(kept[1]) == 6  # two levels would keep all 8 of the toy U-Net
    assert log == ["int8: no remedy with the full- and half-resolution convolutions in FP32: it keeps all 8 "
                   "convolutions in FP32"]
    # a SegFormer-like stem (stride 4): no convolution at full or half resolution, so plain only
    x = ops.parameter([-1, 1, -1, -1], np.float32)
    stem = ops.convolution(x, ops.constant(np.ones((4, 1, 4, 4), np.float32)), [4, 4], [0, 0], [0, 0], [1, 1])
    head = ops.convolution(stem, ops.constant(np.ones((2, 4, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    log.clear()
    assert remedies(ov.Model([head], [x]), 32, log.append, "bf16") == {0: []}
    assert len(log) == 2 and all("it keeps no convolution" in line for line in log)
    # the gate loop names the remedy it tries next, whichever levels are left
    missed = ParityRecord(0.9, "cgm", 8, "test", differing=20)
    told = []
    best, last, records = first_passing([0, 2], lambda level: missed, lambda r, then: told.append(then))
    assert told == [2] and (best, last) == (0, 2) and list(records) == [0, 2]


def test_the_bf16_model_marks_its_full_resolution_layers_precise(toy, tmp_path):
    from neoseg.export.bf16 import write_bf16_model

    xml = tmp_path / "m.bf16.xml"
    kept = write_bf16_model(toy[0], xml, 32)
    text = xml.read_text()
    assert text.count('<attribute name="precise" version="0"') == len(kept) == 6
    model = ov.Core().read_model(str(xml))  # OpenVINO reads the mark back as an attribute of those layers only
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")]
    assert [op.get_friendly_name() for op in convs if list(op.get_rt_info().keys())] == kept


def fake_gate(dice: list):
    """A stand-in for runtime_parity: the models measured in turn (plain, then the remedies)
    score ``dice``."""
    scores = iter(dice)

    def gate(reference, candidate, scans, what, kept=()):
        return ParityRecord(min_dice=next(scores), worst="dgm", slices=1, measured_with=what, scans=len(scans),
                            voxels=10, kept_fp32=kept)
    return gate


@pytest.mark.parametrize("dice, kept", [([0.95, 0.995], 6), ([0.995], 0), ([0.98, 0.97], 0), ([0.95, 0.985], 6)])
def test_export_keeps_the_cheapest_bf16_model_that_passes_else_the_best(toy, tmp_path, monkeypatch, dice, kept):
    import shutil

    from neoseg.export import bf16
    from neoseg.export.int8 import metadata

    onnx = tmp_path / "m.onnx"
    shutil.copy(toy[0], onnx)
    monkeypatch.setattr(bf16, "runtime_parity", fake_gate(dice))
    record = bf16.export_bf16(onnx, toy[1], toy[2], log=lambda m: None)
    entry, stored = json.loads(metadata(onnx)["neoseg.bf16"]), json.loads(metadata(onnx)["neoseg.reduced_precision"])
    assert stored["bf16"] == json.loads(json.dumps(vars(record))) and "fp16" in stored
    assert record.min_dice == (max(dice) if max(dice) < 0.99 else next(d for d in dice if d >= 0.99))
    assert len(record.kept_fp32) == kept and (tmp_path / "m.bf16.xml").exists() == bool(kept) == bool(entry)
    if kept:  # the model beside it is the one measured: its layers marked, its digest
        assert entry["fp32"] == list(record.kept_fp32)
        assert entry["sha256"] == openvino_backend.companion_digest(tmp_path / "m.bf16.xml")
        assert (tmp_path / "m.bf16.xml").read_text().count('name="precise"') == kept


@pytest.mark.skipif(not REAL_BF16, reason="this CPU has no BF16 units")
def test_bf16_runs_the_kept_layers_in_fp32_and_refuses_otherwise(toy, tmp_path, monkeypatch):
    import shutil

    from neoseg.export.bf16 import export_bf16

    onnx = tmp_path / "m.onnx"
    shutil.copy(toy[0], onnx)
    monkeypatch.setattr(ParityRecord, "passed", property(lambda r: bool(r.kept_fp32)))  # plain "misses" the gate,
    # the first remedy "passes"
    record = export_bf16(onnx, toy[1], toy[2], log=lambda m: None)
    assert record.scans == 2 and record.slices > 0 and len(record.kept_fp32) == 6 and "openvino" in record.measured_with
    backend = open_backend(onnx, "ov-cpu", precision="bf16")
    runs = openvino_backend.convolutions(backend.compiled)
    fp32 = {n for names, p in runs if p == "f32" for n in names}
    assert set(record.kept_fp32) <= fp32 and any(p == "bf16" for _, p in runs)  # the rest in BF16
    plain = open_backend(toy[0], "ov-cpu", precision="bf16")  # without the BF16 model: all BF16
    assert all(p == "bf16" for _, p in openvino_backend.convolutions(plain.compiled))
    monkeypatch.setattr(openvino_backend, "fp32_convolutions", lambda compiled: set())
    with pytest.raises(BackendUnavailable, match="in bf16, though the model keeps them in FP32"):
        open_backend(onnx, "ov-cpu", precision="bf16")


def test_a_foreign_bf16_model_is_refused(toy, tmp_path, monkeypatch):
    import shutil

    from neoseg.export import bf16

    onnx = tmp_path / "m.onnx"
    shutil.copy(toy[0], onnx)
    monkeypatch.setattr(bf16, "runtime_parity", fake_gate([0.9, 0.995]))
    bf16.export_bf16(onnx, toy[1], toy[2], log=lambda m: None)
    with open(tmp_path / "m.bf16.bin", "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: (["fp32", "bf16"], ["FP32", "BF16"]))
    assert "is not the BF16 model exported with m.onnx" in open_backend(onnx, "ov-cpu").note
    with pytest.raises(BackendUnavailable, match="cannot run bf16: m.bf16.xml is not the BF16 model"):
        open_backend(onnx, "ov-cpu", precision="bf16")
