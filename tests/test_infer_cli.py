"""neoseg-infer driven as a user would, and the runtime without torch installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import nibabel as nib
import pytest
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.data.dhcp import find_sessions

runner = CliRunner()
CPU_DEFAULT = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"  # auto's CPU path


@pytest.fixture(scope="module")
def scans(tiny_dataset):
    return [s.t2 for s in find_sessions(tiny_dataset)[4:6]]


def test_infer_writes_results_and_reports_the_backend(model, scans, tmp_path):
    result = runner.invoke(app, [*map(str, scans), "-m", str(model), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"backend: {CPU_DEFAULT}" in result.output and " fp32, batch " in result.output
    for scan in scans:
        name = scan.name.replace("_desc-restore_T2w.nii.gz", "")
        dseg = nib.load(tmp_path / f"{name}_desc-neoseg_dseg.nii.gz")
        assert dseg.shape == nib.load(scan).shape and (tmp_path / f"{name}_desc-neoseg_mask.nii.gz").is_file()
        assert f"{scan.name}: " in result.output and "network" in result.output
    # file mode writes what dataset mode writes: the label map's sidecar and the look-up table
    assert (tmp_path / "dseg.tsv").read_text().startswith("index\tname\tcolor\n")
    sidecar = json.loads((tmp_path / f"{name}_desc-neoseg_dseg.json").read_text())
    assert sidecar["Sources"] == [scans[-1].name] and sidecar["Manual"] is False and "Model" in sidecar
    # a rerun skips finished scans without touching them, and redoes one whose outputs are incomplete
    done = tmp_path / dseg.get_filename().split("/")[-1]
    before = done.stat().st_mtime_ns
    first = scans[0].name.replace("_desc-restore_T2w.nii.gz", "")
    (tmp_path / f"{first}_desc-neoseg_volumes.tsv").unlink()
    result = runner.invoke(app, [*map(str, scans), "-m", str(model), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{scans[1].name}: skipped" in result.output and f"{scans[0].name}: skipped" not in result.output
    assert done.stat().st_mtime_ns == before and (tmp_path / f"{first}_desc-neoseg_volumes.tsv").is_file()
    # --overwrite redoes it; the old spelling --outdir still works
    result = runner.invoke(app, [str(scans[1]), "-m", str(model), "--outdir", str(tmp_path), "--overwrite",
                                 "--batch", "5", "--backend", "ort-cpu", "--probabilities"])
    assert result.exit_code == 0, result.output
    assert done.stat().st_mtime_ns != before and "skipped" not in result.output
    assert any(p.name.endswith("_desc-neoseg_probseg.nii.gz") for p in tmp_path.iterdir())


def test_quiet_writes_failures_only(model, scans, tmp_path):
    broken = tmp_path / "sub-X_ses-1_T2w.nii.gz"
    broken.write_bytes(scans[0].read_bytes()[:2000])  # cut short
    out = tmp_path / "out"
    result = runner.invoke(app, [str(scans[0]), str(broken), "-m", str(model), "-o", str(out), "-q"])
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.count("\n") == 2, result.output
    assert "[2/2] sub-X_ses-1_T2w.nii.gz: FAILED" in result.stderr and "1 of 2 scans failed" in result.stderr
    assert any(p.name.endswith("_desc-neoseg_dseg.nii.gz") for p in out.iterdir())


def test_results_of_another_scan_or_model_are_neither_skipped_nor_replaced(model, scans, tmp_path):
    import onnx

    from neoseg.runtime.files import file_digest

    out = tmp_path / "out"
    assert runner.invoke(app, [str(scans[0]), "-m", str(model), "-o", str(out)]).exit_code == 0
    dseg, sidecar = next(out.glob("*_dseg.nii.gz")), next(out.glob("*_mask.json"))
    made = json.loads(sidecar.read_text())
    assert made["SourceDigest"] == file_digest(scans[0]) and made["Model"]["digest"] == file_digest(model)
    before = dseg.read_bytes()
    retrained = onnx.load(model)  # the same network in another file: another model as far as a rerun can tell
    retrained.metadata_props.add(key="note", value="retrained")
    onnx.save(retrained, tmp_path / "retrained.onnx")
    result = runner.invoke(app, [str(scans[0]), "-m", str(tmp_path / "retrained.onnx"), "-o", str(out)])
    assert result.exit_code == 2 and "were made by another model); pass --overwrite" in result.output, result.output
    visit = tmp_path / "visit-2" / scans[0].name  # another scan under the same name
    visit.parent.mkdir()
    visit.write_bytes(scans[1].read_bytes())
    result = runner.invoke(app, [str(visit), "-m", str(model), "-o", str(out)])
    assert result.exit_code == 2 and "made from another scan of that name" in result.output, result.output
    assert dseg.read_bytes() == before
    assert "skipped" in runner.invoke(app, [str(scans[0]), "-m", str(model), "-o", str(out)]).output
    result = runner.invoke(app, [str(visit), "-m", str(model), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0 and json.loads(sidecar.read_text())["SourceDigest"] == file_digest(visit)
    made.pop("SourceDigest")  # results of a version that recorded none: taken as this scan's and model's, unedited
    made.pop("LabelMapDigest")
    del made["Model"]["digest"]
    sidecar.write_text(json.dumps(made))
    assert "skipped" in runner.invoke(app, [str(scans[0]), "-m", str(tmp_path / "retrained.onnx"), "-o",
                                            str(out)]).output


def test_scan_paths_are_checked_before_the_model_loads(scans, tmp_path):
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_bytes(b"not a model")
    result = runner.invoke(app, [str(scans[0]), str(tmp_path / "missing.nii.gz"), "-m", str(not_a_model), "-o",
                                 str(tmp_path / "o")])
    assert result.exit_code == 2 and "missing.nii.gz does not exist" in result.output, result.output
    # `--qc true`: the flag takes no value, and the stray word is named as such
    result = runner.invoke(app, [str(scans[0]), "--qc", "true", "-m", str(not_a_model), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "on/off options take no value" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_user_errors_are_one_line(model, scans, tmp_path):
    cases = [
        (["--backend", "ort-cuda"], "CUDAExecutionProvider"),
        (["--backend", "tensorrt"], "runs a TensorRT engine"),
        (["--backend", "torch-cuda"], "runs a .pt checkpoint"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [str(scans[0]), "-m", str(model), "-o", str(tmp_path), *extra])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    twin = tmp_path / "twin" / scans[0].name
    twin.parent.mkdir()
    twin.write_bytes(scans[0].read_bytes())
    result = runner.invoke(app, [str(scans[0]), str(twin), "-m", str(model), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "would both write" in result.output
    result = runner.invoke(app, [str(scans[0]), "-m", str(scans[1]), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown model file" in result.output


BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "


def test_runtime_runs_without_torch_or_onnx(model, scans, tmp_path):
    """What a scanner-side install has: numpy, scipy, nibabel, isal, typer, onnxruntime, openvino."""
    code = BLOCK + ("from neoseg.cli.infer import main; "
                    f"sys.argv = ['neoseg-infer', {str(scans[0])!r}, '-m', {str(model)!r}, '-o', {str(tmp_path)!r}]; "
                    "main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"backend: {CPU_DEFAULT}" in done.stdout and any(tmp_path.glob("*_desc-neoseg_dseg.nii.gz"))
    # and the torch backend says what is missing instead of failing obscurely
    pt = str(model.with_suffix('.pt'))
    for backend in ("torch-cpu", "auto"):
        code = BLOCK + ("from neoseg.cli.infer import main; "
                        f"sys.argv = ['neoseg-infer', {str(scans[0])!r}, '-m', {pt!r}, '-o', {str(tmp_path / 'pt')!r}, "
                        f"'--backend', {backend!r}]; main()")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "torch is not installed: pip install -e '.[train]'" in done.stderr, backend
        assert done.stderr.startswith("neoseg-infer: error: ") and not (tmp_path / "pt").exists()


def test_threads_bound_the_work_around_the_network_too(model, scans, tmp_path, monkeypatch):
    import neoseg.core.io as io
    import neoseg.runtime.pipeline as pipeline

    made, pools = [], []
    real_write = io.write_niftis

    class Recorded(pipeline.Segmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline, "Segmenter", Recorded)
    monkeypatch.setattr("neoseg.runtime.files.write_niftis",
                        lambda images, threads=None: pools.append(threads) or real_write(images, threads))
    result = runner.invoke(app, [str(scans[0]), "-m", str(model), "-o", str(tmp_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert [s.host_threads for s in made] == [1] and pools == [1]
