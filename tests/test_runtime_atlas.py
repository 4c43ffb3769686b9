"""Atlas fusion at inference (runtime/atlas.py, ``neoseg-infer --atlas``): the blend, the relabelling,
a real registration that recovers children the network did not know, and the command lines."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.core.hierarchy import builtin
from neoseg.data.dhcp import find_sessions
from neoseg.runtime.atlas import AtlasFusion, parse_weights

H = builtin()
CGM, WM, DGM, TCV, CSF = (H.names.index(n) for n in ("cgm", "wm", "dgm", "tcv", "csf"))
THRESHOLDS = (0.5,) * len(H)
runner = CliRunner()


def network_output(truth: np.ndarray, children: tuple[float, float, float]):
    """Labels, masks and probabilities of a network that finds TCV exactly and gives its children
    the probabilities ``children`` (CGM, WM, DGM) everywhere inside it; other structures as ``truth``."""
    probs = np.zeros(truth.shape + (len(H),), np.float32)
    rows = H.target_table()[truth]
    for c in range(len(H)):
        probs[..., c] = rows[..., c] == 1
    inside = probs[..., TCV] == 1
    for c, p in zip((CGM, WM, DGM), children):
        probs[..., c] = np.where(inside, p, 0)
    masks = (probs >= 0.5).astype(np.uint8)
    labels = np.where(inside, np.uint8(H.channels[(CGM, WM, DGM)[int(np.argmax(children))]].value), truth)
    return labels.astype(np.uint8), masks, probs


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_blend_and_relabel_follow_the_atlas_where_it_covers_and_keep_the_rest():
    truth = np.full((4, 4, 4), 4, np.uint8)  # background, with a TCV block of WM and DGM
    truth[1:3, 1:3, 1:3] = 3
    truth[1:3, 1:3, 2] = 7
    labels, masks, probs = network_output(truth, (0.2, 0.6, 0.3))  # the network says WM everywhere in TCV
    fused = np.zeros((3,) + truth.shape, np.float32)  # the atlas: DGM where the truth has it, WM elsewhere
    fused[2][truth == 7] = 1
    fused[1][truth == 3] = 1
    fused[:, 1, 1, 1] = 0  # a voxel the warped atlases do not cover: the network's result stays
    before = probs.copy()
    fusion = AtlasFusion([], H, weight="0.5")
    assert fusion.kids == [CGM, WM, DGM] and fusion.tops == [TCV]
    fusion._blend(fused, labels, masks, probs, THRESHOLDS)
    dgm = truth == 7
    np.testing.assert_allclose(probs[dgm, DGM], 0.5 * 0.3 + 0.5 * 1.0)
    np.testing.assert_allclose(probs[dgm, WM], 0.5 * 0.6)
    assert (labels[dgm] == 7).all() and (masks[dgm, DGM] == 1).all() and (masks[dgm, WM] == 0).all()
    np.testing.assert_allclose(probs[1, 1, 1], before[1, 1, 1])
    assert labels[1, 1, 1] == 3
    outside = truth == 4
    np.testing.assert_array_equal(probs[outside], before[outside])
    assert (labels[outside] == 4).all()
    for c in (CSF, TCV):  # channels that are nobody's child keep the network's
        np.testing.assert_array_equal(probs[..., c], before[..., c])


def test_registered_atlas_recovers_the_children_the_network_did_not_know(tiny_dataset, monkeypatch):
    from neoseg.runtime import atlas as atlas_module

    sessions = find_sessions(tiny_dataset)
    scan, atlases = sessions[5], sessions[:2]  # other phantoms, shifted and scaled
    image = np.asarray(nib.load(scan.t2).dataobj, np.float32)
    truth = np.asarray(nib.load(scan.labels).dataobj).astype(np.uint8)
    labels, masks, probs = network_output(truth, (0.34, 0.33, 0.33))  # no idea which child: all CGM
    fusion = AtlasFusion.from_sessions(atlases, H, per_scan=2, weight=0.5)
    alone = [a.copy() for a in (labels, masks, probs)]
    AtlasFusion.from_sessions(atlases, H, per_scan=2, weight=0.5).refine(image, (2.0, 2.0, 2.0), *alone, THRESHOLDS,
                                                                        workers=1)
    done = fusion.refine(image, (2.0, 2.0, 2.0), labels, masks, probs, THRESHOLDS, workers=2)  # one process each
    for a, b in zip(alone, (labels, masks, probs)):  # seeded single-thread registrations: the same either way
        np.testing.assert_array_equal(a, b)
    # keep_last: the same scan again is blended again, not registered again; another parent is registered
    fusion.keep_last = True
    fusion.refine(image, (2.0, 2.0, 2.0), *network_output(truth, (0.34, 0.33, 0.33)), THRESHOLDS)
    calls = []
    register_all = atlas_module._register_all
    monkeypatch.setattr(atlas_module, "_register_all", lambda jobs, workers: calls.append(jobs) or register_all(jobs, 1))
    fusion.refine(image, (2.0, 2.0, 2.0), *network_output(truth, (0.34, 0.33, 0.33)), THRESHOLDS)
    assert calls == []
    smaller = truth.copy()
    smaller[np.isin(smaller, (2, 3, 7)) & (np.arange(smaller.shape[0])[:, None, None] < smaller.shape[0] // 2)] = 4
    fusion.refine(image, (2.0, 2.0, 2.0), *network_output(smaller, (0.34, 0.33, 0.33)), THRESHOLDS)
    assert len(calls) == 1
    assert sorted(done["atlases"]) == sorted(s.key for s in atlases)
    assert done["weights"] == {"cgm": 0.5, "wm": 0.5, "dgm": 0.5}
    for value in (3, 7):  # WM and DGM, all lost to CGM before, mostly found
        assert dice(labels == value, truth == value) > 0.6, value
    np.testing.assert_array_equal(labels[truth == 4], 4)  # outside TCV: untouched
    assert dice(masks[..., DGM] == 1, truth == 7) > 0.6


def test_each_atlas_registered_with_both_warps_is_fused_like_two_atlases(tiny_dataset):
    sessions = find_sessions(tiny_dataset)
    scan = sessions[5]
    image = np.asarray(nib.load(scan.t2).dataobj, np.float32)
    truth = np.asarray(nib.load(scan.labels).dataobj).astype(np.uint8)
    labels, masks, probs = network_output(truth, (0.34, 0.33, 0.33))
    fusion = AtlasFusion.from_sessions(sessions[:1], H, per_scan=1, warps="flexible,regular")
    done = fusion.refine(image, (2.0, 2.0, 2.0), labels, masks, probs, THRESHOLDS)
    assert done["warps"] == ["regular", "flexible"] and len(done["atlases"]) == 1
    for value in (3, 7):
        assert dice(labels == value, truth == value) > 0.6, value
    with pytest.raises(ValueError, match="--atlas-warps is one or more of regular, flexible"):
        AtlasFusion.from_sessions(sessions[:1], H, warps="regular,stiff")


def test_atlases_are_the_fully_labelled_sessions_nearest_in_brain_size(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    partial = next(data.glob("sub-T00/ses-1/anat/*_dseg.nii.gz"))
    img = nib.load(partial)
    coarse = np.asarray(img.dataobj).copy()
    coarse[np.isin(coarse, (2, 3, 7))] = 10  # TCV only: no children to give
    nib.save(nib.Nifti1Image(coarse, img.affine), partial)
    fusion = AtlasFusion.from_sessions(find_sessions(data), H, per_scan=2)
    keys = [a.key for a in fusion.atlases]
    assert "sub-T00_ses-1" not in keys and len(keys) == 5
    sizes = {a.key: a.parent_mm3 for a in fusion.atlases}
    chosen = fusion.choose(sizes["sub-T03_ses-1"] + 1.0)
    assert chosen[0].key == "sub-T03_ses-1" and len(chosen) == 2
    with pytest.raises(ValueError, match="no fully labelled session"):
        AtlasFusion.from_sessions([s for s in find_sessions(data) if s.subject == "T00"], H)
    with pytest.raises(ValueError, match="--atlas-weight: '1.5' is not a weight"):
        AtlasFusion.from_sessions(find_sessions(data), H, weight=1.5)


def test_neoseg_infer_and_eval_with_atlas(toy_run, tiny_dataset, tmp_path):
    from neoseg.cli.evaluate import app as eval_app
    from neoseg.cli.infer import app as infer_app

    scan = find_sessions(tiny_dataset)[5].t2
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    assert runner.invoke(infer_app, [str(scan), "-m", str(toy_run / "best.pt"), "-o", str(plain)]).exit_code == 0
    result = runner.invoke(infer_app, [str(scan), "-m", str(toy_run / "best.pt"), "-o", str(fused),
                                       "--atlas", str(tiny_dataset), "--atlas-per-scan", "2",
                                       "--atlas-warps", "regular,flexible"])
    assert result.exit_code == 0, result.output
    assert "atlas fusion: 6 fully labelled session(s)" in result.output and "warps regular,flexible" in result.output
    sidecar = json.loads(next(fused.glob("*_mask.json")).read_text())
    assert len(sidecar["Model"]["atlas_fusion"]["atlases"]) == 2 and "atlas" in sidecar["Timings"]
    assert sidecar["Model"]["atlas_fusion"]["warps"] == ["regular", "flexible"]
    assert not list(fused.glob("*probseg*"))
    assert "atlas_fusion" not in json.loads(next(plain.glob("*_mask.json")).read_text())["Model"]

    result = runner.invoke(infer_app, [str(scan), "-m", str(toy_run / "best.pt"), "-o", str(tmp_path / "bad"),
                                       "--atlas", str(tiny_dataset), "--atlas-weight", "0"])
    assert result.exit_code != 0 and "every child's weight is 0" in result.output
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())

    for atlas in ("run", str(tiny_dataset)):
        csv = tmp_path / f"eval-{len(atlas)}.csv"
        result = runner.invoke(eval_app, [str(toy_run / "best.pt"), "--atlas", atlas, "-q", "-o", str(csv)])
        assert result.exit_code == 0, result.output
        assert "| dgm |" in result.output and csv.is_file()

    chosen = tmp_path / "chosen.csv"
    result = runner.invoke(eval_app, [str(toy_run / "best.pt"), "--atlas", "run", "--subset", "val",
                                      "--atlas-weight", "choose", "-q", "-o", str(chosen)])
    assert result.exit_code == 0, result.output
    assert "Chosen: --atlas-weight " in result.output and "| dgm |" in result.output
    assert {line.rsplit(",", 1)[1] for line in chosen.read_text().splitlines()[1:]} == {"0.0", "0.25", "0.5", "0.75"}
    for args, message in ((["--atlas-weight", "choose"], "needs --atlas"),
                          (["--atlas", "run", "--atlas-weight", "choose"], "never the test sessions"),
                          (["--atlas", "run", "--atlas-weight", "choose", "--subset", "all"], "--subset val")):
        result = runner.invoke(eval_app, [str(toy_run / "best.pt"), "-q", *args])
        assert result.exit_code == 2 and message in result.output


def test_an_atlas_folder_leaves_out_the_sessions_evaluated(tiny_dataset):
    from neoseg.cli.common import atlas_fusion

    fusion = atlas_fusion(tiny_dataset, H, 3, 0.5, exclude={"sub-T02_ses-1", "sub-T05_ses-1"})
    assert sorted(a.key for a in fusion.atlases) == [f"sub-T0{i}_ses-1" for i in (0, 1, 3, 4)]


def test_atlas_fusion_works_in_the_scan_s_own_axis_order(toy_run, tiny_dataset, tmp_path):
    """A scan stored flipped and transposed (another orientation in its header) gets the same labels,
    mapped back onto its own grid, as the canonical one: the registration is seeded and
    single-threaded, so it gives the same result every time."""
    from neoseg.cli.infer import app as infer_app

    scan = find_sessions(tiny_dataset)[5].t2
    img = nib.load(scan)
    data = np.asarray(img.dataobj)
    turned = np.flip(data, 0).transpose(1, 0, 2)  # stored y, -x, z
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    other = tmp_path / "turned_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(turned), img.affine @ flip @ swap), other)
    labels = {}
    for name, path in (("plain", scan), ("turned", other)):
        out = tmp_path / name
        result = runner.invoke(infer_app, [str(path), "-m", str(toy_run / "best.pt"), "-o", str(out),
                                           "--atlas", str(tiny_dataset), "--atlas-per-scan", "1"])
        assert result.exit_code == 0, result.output
        labels[name] = np.asarray(nib.load(next(out.glob("*_dseg.nii.gz"))).dataobj)
    back = np.flip(labels["turned"].transpose(1, 0, 2), 0)
    assert back.shape == data.shape
    np.testing.assert_array_equal(back, labels["plain"])


def test_a_failed_registration_is_one_line_and_writes_nothing(toy_run, tiny_dataset, tmp_path, monkeypatch):
    from neoseg.cli.infer import app as infer_app
    from neoseg.core import registration

    def broken(*args, **kwargs):
        raise RuntimeError("Greedy: itk::ExceptionObject\nmore lines")

    monkeypatch.setattr(registration, "warp_atlas", broken)  # in this process: --threads 1 registers here
    out = tmp_path / "out"
    result = runner.invoke(infer_app, [str(find_sessions(tiny_dataset)[5].t2), "-m", str(toy_run / "best.pt"),
                                       "-o", str(out), "--atlas", str(tiny_dataset), "--threads", "1"])
    assert result.exit_code != 0
    assert "--atlas: registering sub-T" in result.output and "(Greedy: itk::ExceptionObject)" in result.output
    assert not list(out.glob("*.nii.gz"))


def test_an_error_in_a_registration_process_reaches_the_caller(tiny_dataset, tmp_path):
    from neoseg.runtime.atlas import Atlas, _Job, _register_all

    session = find_sessions(tiny_dataset)[0]
    image = np.asarray(nib.load(session.t2).dataobj, np.float32)
    broken = tmp_path / "broken_T2w.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    jobs = [_Job(image, image > 0, (2.0, 2.0, 2.0), Atlas(key, t2, session.labels, 1.0), "regular",
                 H.target_table(), [CGM, WM, DGM], [TCV]) for key, t2 in (("good", session.t2), ("bad", broken))]
    with pytest.raises(ValueError, match="broken_T2w.nii.gz"):
        _register_all(jobs, workers=2)


def test_weights_one_for_every_child_or_one_per_child():
    kids = [CGM, WM, DGM]
    assert parse_weights("0.5", H, kids) == {CGM: 0.5, WM: 0.5, DGM: 0.5}
    assert parse_weights("0.5,wm=0,cgm=0", H, kids) == {CGM: 0.0, WM: 0.0, DGM: 0.5}
    assert parse_weights("dgm=0.75", H, kids) == {CGM: 0.5, WM: 0.5, DGM: 0.75}
    assert parse_weights("wm=0.2, 1", H, kids) == {CGM: 1.0, WM: 0.2, DGM: 1.0}
    for bad, match in (("csf=0.5", "for a child \\(cgm, wm, dgm\\)"), ("x", "'x' is not a weight"),
                       ("-0.1", "not a weight"), ("0", "every child's weight is 0")):
        with pytest.raises(ValueError, match=match):
            parse_weights(bad, H, kids)


def test_a_child_of_weight_0_keeps_the_network_s_probability():
    truth = np.full((4, 4, 4), 4, np.uint8)
    truth[1:3, 1:3, 1:3] = 3
    truth[1:3, 1:3, 2] = 7
    labels, masks, probs = network_output(truth, (0.2, 0.6, 0.3))
    fused = np.zeros((3,) + truth.shape, np.float32)
    fused[2][truth == 7] = 1
    fused[1][truth == 3] = 1
    before = probs.copy()
    AtlasFusion([], H, weight="0,dgm=1")._blend(fused, labels, masks, probs, THRESHOLDS)
    np.testing.assert_array_equal(probs[..., WM], before[..., WM])
    np.testing.assert_allclose(probs[truth == 7, DGM], 1.0)
    assert (labels[truth == 7] == 7).all() and (labels[truth == 3] == 3).all()


def test_the_fusion_cost_benchmark_times_both_settings_and_compares_their_labels(tmp_path, monkeypatch):
    from neoseg.benchmarks import atlas_fusion_cost

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its generated cohort
    atlas_fusion_cost.main(["--grid", "32", "--atlases", "2", "--workers", "2", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "atlas-fusion-cost.json").read_text())
    assert result["sequential_s"] > 0 and result["parallel_s"] > 0 and result["same_labels"] is True
    assert "2 at once (s)" in (tmp_path / "out" / "atlas-fusion-cost.md").read_text()


def test_choosing_weights_leaves_the_fusion_registering_every_scan_even_when_it_fails(monkeypatch):
    from types import SimpleNamespace

    from neoseg.train import atlas_weights

    fusion = SimpleNamespace(keep_last=False, kids=[1], weights={})
    segmenter = SimpleNamespace(atlas=fusion)

    def fail(*_):
        assert fusion.keep_last  # one registration per session while the candidates are scored
        raise RuntimeError("the scan could not be read")

    monkeypatch.setattr(atlas_weights, "evaluate_sessions", fail)
    with pytest.raises(RuntimeError, match="could not be read"):
        atlas_weights.choose_weights(segmenter, ["session"])
    assert fusion.keep_last is False


def test_a_script_without_a_main_guard_is_told_what_registration_processes_need(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "segment.py"  # its top level runs again in every spawned registration process
    script.write_text("from neoseg.runtime.atlas import _register_all\n_register_all([None, None], 2)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    # the spawned processes' own tracebacks may still be printing after the parent's: find its line
    told = [line for line in done.stderr.splitlines()
            if line.startswith("ValueError: --atlas: a registration process ended abruptly")]
    assert told and "if __name__ == '__main__':" in told[-1]
