"""neoseg-infer on whole datasets: layout, group files, volumes, QC, skip-and-resume, filters and
failing scans, on a small built-in synthetic cohort and a tiny trained model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.core.hierarchy import builtin
from neoseg.data.dhcp import find_sessions
from neoseg.data.synth import CohortSpec, generate_cohort
from neoseg.runtime.dataset import FinishedScan, DatasetScan, find_scans
from neoseg.runtime.qc import render_qc, structure_colours
from neoseg.runtime.report import outliers, render_report
from neoseg.runtime.volumes import read_volumes_tsv, structure_volumes

runner = CliRunner()
SPEC = CohortSpec(n_subjects=4, grid=32, seed=21, both_sessions_fraction=0.5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "dhcp", SPEC, progress=False)


@pytest.fixture(scope="module")
def model(cohort, tmp_path_factory) -> Path:
    from neoseg.benchmarks.toy import toy_onnx

    return toy_onnx(tmp_path_factory.mktemp("model"), find_sessions(cohort)[:3], slice_size=32)[1]


@pytest.fixture(scope="module")
def full_run(cohort, model, tmp_path_factory):
    """One --qc --json run over the whole cohort, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("deriv") / "neoseg"
    summary = out.parent / "summary.json"
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--qc", "--json", str(summary)])
    assert result.exit_code == 0, result.output
    return out, summary, result.output


def tsv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def sessions_of(cohort: Path) -> list[tuple[str, str]]:
    return [(s.subject, s.session) for s in find_sessions(cohort)]


# ---- layout and dataset files --------------------------------------------------------------
def test_dataset_mirrors_the_layout_and_writes_bids_dataset_files(cohort, model, full_run):
    out, summary, output = full_run
    sessions = sessions_of(cohort)
    for sub, ses in sessions:
        anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
        for suffix in ("dseg.nii.gz", "mask.nii.gz", "mask.json", "volumes.tsv", "qc.png"):
            assert (anat / f"sub-{sub}_ses-{ses}_desc-neoseg_{suffix}").is_file(), (anat, suffix)
        assert not list(anat.glob(".*")), "no temporary files left"
    assert f"[{len(sessions)}/{len(sessions)}]" in output  # plain progress lines off a terminal

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "neoseg" and generated["Version"]
    assert generated["Model"]["Digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()

    lut = tsv(out / "dseg.tsv")
    h = builtin()
    assert [(int(r["index"]), r["name"]) for r in lut] == [(h.channels[i].value, h.channels[i].name) for i in h.leaves]

    group = tsv(out / "volumes.tsv")
    assert [(r["participant_id"], r["session_id"]) for r in group] == [(f"sub-{a}", f"ses-{b}") for a, b in sessions]
    assert list(group[0])[:4] == ["participant_id", "session_id", "scan", "tcv"]
    assert json.loads((out / "volumes.json").read_text())["tcv"]["Units"] == "ml"

    runs = json.loads(summary.read_text())
    assert runs["counts"] == {"done": len(sessions), "skipped": 0, "failed": 0, "not run": 0}
    assert {Path(p).name for p in runs["dataset_files"]} == {"dataset_description.json", "dseg.tsv", "volumes.tsv",
                                                              "volumes.json", "index.html"}
    for scan in runs["scans"]:
        assert scan["status"] == "done" and scan["error"] is None and scan["timings"]["network"] >= 0
        assert all(Path(p).is_file() for p in scan["outputs"].values()) and "qc" in scan["outputs"]


def test_report_links_every_picture_and_works_without_a_server(cohort, full_run):
    out, _, _ = full_run
    page = (out / "index.html").read_text()
    sources = [s.split('"')[0] for s in page.split('<img src="')[1:]]
    assert len(sources) == len(sessions_of(cohort))
    for src in sources:
        assert not src.startswith(("/", "http")) and (out / src).is_file()  # relative: works from file://
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    for sub, ses in sessions_of(cohort):
        assert f"sub-{sub}_ses-{ses}</td>" in page


def test_volumes_match_a_hand_count_of_the_label_map(cohort, full_run):
    out, _, _ = full_run
    sub, ses = sessions_of(cohort)[-1]
    anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
    img = nib.load(anat / f"sub-{sub}_ses-{ses}_desc-neoseg_dseg.nii.gz")
    labels = np.asarray(img.dataobj)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
    rows = {r["structure"]: r for r in tsv(anat / f"sub-{sub}_ses-{ses}_desc-neoseg_volumes.tsv")}
    for name, values in (("cgm", [2]), ("wm", [3]), ("dgm", [7]), ("csf", [1]), ("tcv", [2, 3, 7])):
        count = int(np.isin(labels, values).sum())
        assert int(rows[name]["voxels"]) == count
        assert float(rows[name]["volume_ml"]) == pytest.approx(count * voxel_ml, abs=1e-3)
    assert int(rows["tcv"]["voxels"]) > 0
    group = next(r for r in tsv(out / "volumes.tsv") if r["participant_id"] == f"sub-{sub}"
                 and r["session_id"] == f"ses-{ses}")
    assert float(group["tcv"]) == pytest.approx(float(rows["tcv"]["volume_ml"]), abs=1e-3)


@pytest.mark.parametrize("per_value", [True, False])
def test_structure_volumes_on_a_known_map(per_value, monkeypatch):
    import neoseg.runtime.volumes as volumes_module

    monkeypatch.setattr(volumes_module, "PER_VALUE_COUNTS", 1000 if per_value else 0)  # both ways of counting
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, :3] = 2  # 3 cgm
    labels[1, :2, :2] = 3  # 4 wm
    labels[2, 0, 0] = 7  # 1 dgm
    labels[3, 4, 5] = 10  # 1 voxel labelled tcv itself (a coarse map)
    labels[3, 0, 0] = 250  # a value no channel holds: counted nowhere
    labels = np.asfortranarray(labels)  # as the runtime hands it over
    volumes = {v.structure: v for v in structure_volumes(labels, (0.5, 1.0, 2.0), builtin())}
    assert (volumes["cgm"].voxels, volumes["wm"].voxels, volumes["dgm"].voxels) == (3, 4, 1)
    assert volumes["tcv"].voxels == 9 and volumes["tcv"].ml == pytest.approx(9 * 1.0 / 1000)
    assert volumes["unlabelled"].voxels == labels.size - 10 and volumes["tcv"].label == 10


# ---- skip, resume, overwrite -----------------------------------------------------------------
def test_rerun_skips_finished_scans_and_redoes_an_interrupted_one(cohort, model, tmp_path, monkeypatch):
    import neoseg.runtime.files as files

    out = tmp_path / "neoseg"
    real, calls = files.segment_file, []

    def interrupted_at_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "segment_file", interrupted_at_second)
    summary = tmp_path / "run.json"
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--json", str(summary)])
    assert result.exit_code == 130 and "interrupted" in result.output
    counts = json.loads(summary.read_text())["counts"]
    assert counts["done"] == 1 and counts["not run"] == len(sessions_of(cohort)) - 1
    assert (out / "volumes.tsv").is_file() and len(tsv(out / "volumes.tsv")) == 1  # group files cover what is done
    monkeypatch.setattr(files, "segment_file", real)

    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    counts = json.loads(summary.read_text())["counts"]
    assert counts == {"done": len(sessions_of(cohort)) - 1, "skipped": 1, "failed": 0, "not run": 0}

    # a scan whose output set is incomplete (a killed run) is redone; the others are untouched
    dsegs = sorted(out.glob("sub-*/ses-*/anat/*_dseg.nii.gz"))
    before = {p: p.stat().st_mtime_ns for p in dsegs}
    victim = dsegs[0]
    victim.with_name(victim.name.replace("_dseg.nii.gz", "_volumes.tsv")).unlink()
    leftover = victim.with_name(f".{victim.name}.abc123.part.nii.gz")
    leftover.write_bytes(b"half")
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "redone" in result.output and result.output.count("skipped (finished earlier)") == len(dsegs) - 1
    assert victim.stat().st_mtime_ns != before[victim] and not leftover.exists()
    assert all(p.stat().st_mtime_ns == before[p] for p in dsegs[1:])

    # asking for more outputs (--qc) redoes scans that lack them; --overwrite redoes everything
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--qc",
                                 "--participant-label", dsegs[1].name.split("_")[0]])
    assert result.exit_code == 0 and "redone" in result.output and (out / "index.html").is_file()


def test_a_scan_replaced_since_its_results_were_written_is_not_skipped(cohort, model, tmp_path):
    dataset = tmp_path / "dhcp"
    shutil.copytree(cohort, dataset)
    out = tmp_path / "neoseg"
    assert runner.invoke(app, [str(dataset), "-m", str(model), "-o", str(out)]).exit_code == 0
    t2 = [s.t2 for s in find_sessions(dataset)]
    t2[0].write_bytes(t2[1].read_bytes())  # a new scan copied over the old one
    result = runner.invoke(app, [str(dataset), "-m", str(model), "-o", str(out)])
    assert result.exit_code == 2 and "1 of" in result.output and "made from another scan of that name" in result.output
    result = runner.invoke(app, [str(dataset), "-m", str(model), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output


def test_output_folder_checks(cohort, model, full_run, tmp_path):
    out, _, _ = full_run
    other = tmp_path / "other.onnx"
    other.write_bytes(model.read_bytes() + b"\xc0\x3e\x00")  # another digest: an unknown protobuf field 1000 = 0
    result = runner.invoke(app, [str(cohort), "-m", str(other), "-o", str(out)])
    assert result.exit_code == 2 and "results of another model" in result.output and "--overwrite" in result.output
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(cohort)])
    assert result.exit_code == 2 and "is the input dataset" in result.output
    subject = next(cohort.glob("sub-*"))
    for inside in (subject, subject / "ses-1" / "anat", cohort / "sub-999", cohort / "derivatives"):
        result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(inside)])
        assert result.exit_code == 2 and ("inside the input dataset, outside its derivatives" in result.output
                                          or "the dataset's derivatives folder itself" in result.output)
    assert not (cohort / "sub-999").exists() and not (subject / "dataset_description.json").exists()
    # a run of another model cut short after one scan: the group tables hold only what it made
    half = tmp_path / "half"
    shutil.copytree(out, half)
    result = runner.invoke(app, [str(cohort), "-m", str(other), "-o", str(half), "--overwrite",
                                 "--participant-label", subject.name])
    assert result.exit_code == 0 and "hold results made by another model" in result.output, result.output
    assert [row["participant_id"] for row in tsv(half / "volumes.tsv")] == [subject.name]
    other_digest = "sha256:" + hashlib.sha256(other.read_bytes()).hexdigest()
    assert other_digest[:19] in (half / "index.html").read_text()  # the earlier report rewritten, not left stale
    # --overwrite: the other model redoes every scan, and the folder then names it
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = runner.invoke(app, [str(cohort), "-m", str(other), "-o", str(copy), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output and result.output.count(" slices computed") == len(sessions_of(cohort))
    digest = json.loads((copy / "dataset_description.json").read_text())["GeneratedBy"][0]["Model"]["Digest"]
    assert digest == "sha256:" + hashlib.sha256(other.read_bytes()).hexdigest()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(foreign)])
    assert result.exit_code == 2 and "holds another dataset" in result.output
    (foreign / "dataset_description.json").unlink()
    (foreign / "volumes.tsv").write_text("my own table\n")
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(foreign)])
    assert result.exit_code == 2 and "already holds volumes.tsv" in result.output
    assert (foreign / "volumes.tsv").read_text() == "my own table\n"


# ---- selection -------------------------------------------------------------------------------
def test_participant_and_session_filters(cohort, model, tmp_path, monkeypatch):
    import neoseg.runtime.backends as backends

    opened = []
    real_open = backends.open_backend
    monkeypatch.setattr(backends, "open_backend", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    sessions = sessions_of(cohort)
    subject = sessions[0][0]
    picked = [s for s in sessions if s[0] == subject]
    out = tmp_path / "a"
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--participant-label", subject])
    assert result.exit_code == 0, result.output
    assert len(opened) == 1  # the model is loaded once for all scans
    assert sorted(p.name.split("_desc")[0] for p in out.glob("sub-*/ses-*/anat/*_dseg.nii.gz")) == \
        sorted(f"sub-{a}_ses-{b}" for a, b in picked)
    assert [scan.subject for scan in find_scans(cohort, [f"sub-{subject}"])] == [subject] * len(picked)
    assert {s.session for s in find_scans(cohort, None, [picked[0][1]])} == {picked[0][1]}
    result = runner.invoke(app, [str(cohort), "-m", str(model), "-o", str(out), "--participant-label", "NOPE"])
    assert result.exit_code == 2 and "NOPE" in result.output and "no such subject" in result.output
    t2 = find_sessions(cohort)[0].t2
    result = runner.invoke(app, [str(t2), "-m", str(model), "-o", str(out), "--participant-label", subject])
    assert result.exit_code == 2 and "dataset folder" in result.output


def test_output_defaults_to_the_datasets_derivatives_and_bids_apps_spelling(cohort, model, tmp_path):
    dataset = tmp_path / "dhcp"
    shutil.copytree(cohort, dataset)
    subject = sessions_of(cohort)[0][0]
    result = runner.invoke(app, [str(dataset), "-m", str(model), "--participant_label", subject])
    assert result.exit_code == 0, result.output
    out = dataset / "derivatives" / "neoseg"
    assert (out / "dataset_description.json").is_file() and (out / "dseg.tsv").is_file()
    assert {p.name.split("_")[0] for p in out.glob("sub-*/ses-*/anat/*_dseg.nii.gz")} == {f"sub-{subject}"}
    assert all(p.with_name(p.name.replace(".nii.gz", ".json")).is_file() for p in out.glob("sub-*/*/anat/*_dseg.nii.gz"))
    # a rerun does not take the derivatives for scans of the dataset
    result = runner.invoke(app, [str(dataset), "-m", str(model), "--participant_label", subject])
    assert result.exit_code == 0 and "already done" in result.output and " slices computed" not in result.output


def test_bids_layout_without_sessions_prefers_the_restored_t2(cohort, tmp_path):
    t2 = find_sessions(cohort)[0].t2
    bids = tmp_path / "bids"
    for sub in ("01", "02"):
        anat = bids / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(t2, anat / f"sub-{sub}_T2w.nii.gz")
    shutil.copy(t2, bids / "sub-02" / "anat" / "sub-02_desc-restore_T2w.nii.gz")
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a T2w")
    scans = find_scans(bids)
    assert [(s.subject, s.session, s.path.name) for s in scans] == [
        ("01", None, "sub-01_T2w.nii.gz"), ("02", None, "sub-02_desc-restore_T2w.nii.gz")]
    assert scans[0].outdir("OUT") == Path("OUT/sub-01/anat")


# ---- failures ----------------------------------------------------------------------------------
def test_a_failing_scan_does_not_stop_the_others(cohort, model, tmp_path):
    sessions = find_sessions(cohort)[:2]
    data = tmp_path / "bids"
    for s in sessions:
        anat = data / f"sub-{s.subject}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(s.t2, anat / f"sub-{s.subject}_T2w.nii.gz")
    bad = data / "sub-BAD" / "anat" / "sub-BAD_T2w.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x1f\x8b not really gzip")
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    result = runner.invoke(app, [str(data), "-m", str(model), "-o", str(out), "--qc", "--json", str(summary)])
    assert result.exit_code == 1, result.output
    assert "sub-BAD/anat/sub-BAD: FAILED" in result.output and "1 of 3 scans failed: sub-BAD" in result.output
    assert "Traceback" not in result.output
    assert not (out / "sub-BAD").exists() or not any((out / "sub-BAD").rglob("*"))
    runs = json.loads(summary.read_text())
    status = {Path(s["input"]).name: (s["status"], s["error"]) for s in runs["scans"]}
    assert status["sub-BAD_T2w.nii.gz"][0] == "failed" and "sub-BAD_T2w.nii.gz" in status["sub-BAD_T2w.nii.gz"][1]
    assert [v[0] for k, v in status.items() if k != "sub-BAD_T2w.nii.gz"] == ["done", "done"]
    page = (out / "index.html").read_text()
    assert 'class="failed"' in page and "sub-BAD" in page
    assert len(tsv(out / "volumes.tsv")) == 2

    # several scan files: the same, exit 1; one scan file: its own one-line error, exit 2
    good = sessions[0].t2
    result = runner.invoke(app, [str(good), str(bad), "-m", str(model), "-o", str(tmp_path / "files")])
    assert result.exit_code == 1 and "1 of 2 scans failed" in result.output
    result = runner.invoke(app, [str(bad), "-m", str(model), "-o", str(tmp_path / "one")])
    assert result.exit_code == 2 and "sub-BAD_T2w.nii.gz" in result.output
    assert [line for line in result.output.splitlines() if "sub-BAD" in line] == \
        [line for line in result.output.splitlines() if line.startswith("neoseg-infer: error: ")]  # one line


def test_json_summary_never_replaces_a_users_file(cohort, model, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    t2 = find_sessions(cohort)[0].t2
    result = runner.invoke(app, [str(t2), "-m", str(model), "-o", str(tmp_path / "o"), "--json", str(mine)])
    assert result.exit_code == 2 and "not a neoseg summary" in result.output
    assert mine.read_text() == '{"mine": true}' and not (tmp_path / "o").exists()


# ---- QC picture and report -------------------------------------------------------------------
def test_qc_picture_is_the_same_whatever_the_stored_orientation():
    h = builtin()
    labels = np.zeros((20, 24, 16), np.uint8)
    labels[4:16, 5:19, 3:13] = 3
    labels[6:10, 8:12, 5:9] = 2
    t2 = np.where(labels > 0, 100.0, 0.0).astype(np.float32) + np.arange(20)[:, None, None]
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    a = np.asarray(render_qc(t2, labels, affine, (1.0, 1.5, 2.0), h, "scan"))
    flipped = np.diag([-1.0, 1.5, 2.0, 1.0])  # stored left-right reversed
    flipped[0, 3] = 19.0
    b = np.asarray(render_qc(t2[::-1], labels[::-1], flipped, (1.0, 1.5, 2.0), h, "scan"))
    assert np.array_equal(a, b)
    colours = structure_colours(h)
    for name in ("wm", "cgm"):
        rgb = tuple(int(colours[name][i:i + 2], 16) for i in (1, 3, 5))
        assert (a.reshape(-1, 3) == rgb).all(axis=1).sum() > 20, name  # outlines drawn in its colour


def test_outliers_are_flagged_by_robust_distance_from_the_median():
    def finished(tcv: float) -> FinishedScan:
        return FinishedScan(DatasetScan(Path(f"sub-{tcv:.0f}_T2w.nii.gz"), Path("x"), "s", None), {"tcv": tcv},
                            1.0, None)

    rows = [finished(v) for v in (300, 310, 305, 295, 320, 302, 150)]
    assert list(outliers(rows, ["tcv"])) == [(6, "tcv")]
    log = [np.log(v + 0.1) for v in (300, 310, 305, 295, 150)]  # by hand: median and MAD of the logs
    mad = np.median(np.abs(np.array(log) - log[0]))
    assert outliers(rows[:4] + rows[-1:], ["tcv"]) == {(4, "tcv"): pytest.approx(0.6745 * (log[4] - log[0]) / mad)}
    assert outliers(rows[:3] + rows[-1:], ["tcv"]) == {}  # too few scans to judge
    # a wide but plausible spread (preterm and term) flags nothing; a tenth of the median does
    spread = [finished(v) for v in (120, 150, 200, 260, 300, 350, 400)]
    assert outliers(spread, ["tcv"]) == {} and list(outliers(spread + [finished(20)], ["tcv"])) == [(7, "tcv")]
    description = {"GeneratedBy": [{"Name": "neoseg", "Version": "0", "Model": {}}], "SourceDatasets": [{}]}
    page = render_report(rows, [], ["tcv"], {"tcv": "#ff0000"}, description)
    assert page.count('class="out"') == 1 and page.count('class="flag"') == 1


@pytest.mark.slow
def test_report_shows_its_pictures_in_a_headless_browser(full_run, tmp_path):
    from neoseg.benchmarks.browser import colour_pixels, find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium or Chrome installed")
    out, _, _ = full_run
    shot = screenshot(out / "index.html", tmp_path / "report.png", width=1300, height=800)
    # the QC pictures' black background is the only pure black on the page (text is #222): they loaded
    assert colour_pixels(shot, "#000000", 10) > 20000
    assert colour_pixels(shot, "#f3f3f3", 2) > 1000  # the styled table header
    (out / "broken.html").write_text((out / "index.html").read_text().replace('src="sub-', 'src="missing/sub-'))
    broken = screenshot(out / "broken.html", tmp_path / "broken.png", width=1300, height=800)
    assert colour_pixels(broken, "#000000", 10) < 1000  # the measure sees pictures that fail to load
    (out / "broken.html").unlink()


def test_scan_files_get_volumes_and_qc_too(cohort, model, tmp_path):
    t2 = find_sessions(cohort)[0].t2
    result = runner.invoke(app, [str(t2), "-m", str(model), "-o", str(tmp_path), "--qc"])
    assert result.exit_code == 0, result.output
    name = t2.name.replace("_desc-restore_T2w.nii.gz", "")
    assert read_volumes_tsv(tmp_path / f"{name}_desc-neoseg_volumes.tsv")["tcv"] >= 0
    from PIL import Image

    with Image.open(tmp_path / f"{name}_desc-neoseg_qc.png") as png:
        assert png.format == "PNG" and png.width > 600
    assert not (tmp_path / "dataset_description.json").exists()  # dataset files only in dataset mode


def test_dataset_mode_and_qc_need_neither_torch_nor_matplotlib(cohort, model, tmp_path):
    import subprocess
    import sys

    subject = sessions_of(cohort)[0][0]
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; sys.modules['matplotlib'] = None; "
            "from neoseg.cli.infer import main; "
            f"sys.argv = ['neoseg-infer', {str(cohort)!r}, '-m', {str(model)!r}, '-o', {str(tmp_path / 'o')!r}, "
            f"'--qc', '--participant-label', {subject!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "index.html").is_file() and list((tmp_path / "o").rglob("*_desc-neoseg_qc.png"))
