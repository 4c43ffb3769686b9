"""neoseg-serve on the loopback interface: a sender and a destination SCP inside the test, 10 studies
sent one after another (one broken: its association aborted halfway through the series), plus a
connection that speaks no DICOM. The 9 good studies' SEGs arrive, the broken one gets one error
line, the node keeps answering, and its log holds no patient data."""

from __future__ import annotations

import json
import logging
import socket
import time

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pynetdicom")
import pydicom  # noqa: E402
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt  # noqa: E402
from pynetdicom.sop_class import MRImageStorage, SegmentationStorage, Verification  # noqa: E402

from dicom_synth import PATIENT_ID, PATIENT_NAME, new_study, write_series  # noqa: E402
from neoseg.data.dhcp import find_sessions  # noqa: E402
from neoseg.dicom.config import EXAMPLE, parse_config  # noqa: E402

SECRETS = (PATIENT_NAME, PATIENT_ID, "Secretina")


def _destination(received: list):
    ae = AE(ae_title="DEST")
    ae.add_supported_context(SegmentationStorage, ALL_TRANSFER_SYNTAXES)

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def _send(port: int, files: list, abort_after: int | None = None) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="NEOSEG")
    assert assoc.is_established
    for k, path in enumerate(files):
        if abort_after is not None and k == abort_after:
            assoc.abort()
            return
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000
    assoc.release()


def _echo(port: int) -> int:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEOSEG")
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status


@pytest.mark.slow
def test_node_returns_a_seg_per_study_and_survives_a_broken_one(model, tiny_dataset, tmp_path, caplog):
    from neoseg.cli.serve import build_node

    caplog.set_level(logging.INFO, logger="neoseg.serve")
    img = nib.load(find_sessions(tiny_dataset)[5].t2)
    data = np.round(np.asarray(img.dataobj)).astype(np.int16)
    received: list = []
    destination = _destination(received)
    config = parse_config({
        "node": {"ae_title": "NEOSEG", "host": "127.0.0.1", "port": 0, "spool": str(tmp_path / "spool"),
                 "output": str(tmp_path / "out"), "settle_seconds": 1.0, "queue_size": 2, "timeout_seconds": 5},
        "model": {"path": str(model), "backend": "ort-cpu"},
        "destination": {"ae_title": "DEST", "host": "127.0.0.1", "port": destination.server_address[1]},
        "series": {"description": ["t2"], "exclude": ["survey"]},
    })
    node = build_node(config)
    _, port = node.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # no DICOM at all
            s.sendall(b"\x07\x00garbage, not an A-ASSOCIATE-RQ" * 4)
        studies, broken = [], None
        for i in range(10):
            uids = new_study()
            folder = tmp_path / "send" / f"study{i}"
            write_series(data, img.affine, folder / "t2", uids, description="T2w TSE", number=3)
            write_series(data[:, :, ::6], img.affine @ np.diag([1, 1, 6, 1]), folder / "survey", uids,
                         description="Survey", number=1)
            files = sorted((folder / "survey").iterdir()) + sorted((folder / "t2").iterdir())
            if i == 4:  # the broken one: the association is aborted halfway through the T2w series
                broken = uids["uid"]
                _send(port, files, abort_after=len(files) // 2 + 2)
            else:
                studies.append(uids["uid"])
                _send(port, files)
        deadline = time.monotonic() + 180
        errors = lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]  # noqa: E731
        while time.monotonic() < deadline and (len(received) < 9 or not errors()):
            time.sleep(0.2)
        time.sleep(1.5)  # nothing more may arrive
        assert _echo(port) == 0x0000  # still answering
    finally:
        node.stop()
        destination.shutdown()
    assert sorted(str(seg.StudyInstanceUID) for seg in received) == sorted(studies)
    for seg in received:
        assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 9
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "error" in line] == [
        line for line in lines if line.startswith(f"study {broken}: error:")]
    assert len([line for line in lines if line.startswith(f"study {broken}:")]) == 1
    assert "incomplete" in next(line for line in lines if line.startswith(f"study {broken}:"))
    for study in studies:
        assert len([line for line in lines if line.startswith(f"study {study}: series 3 (T2w TSE)")]) == 1
    assert not any(secret in line for line in lines for secret in SECRETS)
    assert (tmp_path / "spool" / "failed" / broken).is_dir()  # kept for a look; the others are cleared
    assert not any((tmp_path / "spool" / s).exists() for s in studies)


def test_example_config_parses_and_bad_ones_are_refused(tmp_path):
    import tomllib

    config = parse_config(tomllib.loads(EXAMPLE))
    assert config.destination.port == 104 and config.rules.explicit and config.settle_seconds == 30
    with pytest.raises(ValueError, match=r"\[destination\] port must be"):
        parse_config({**tomllib.loads(EXAMPLE), "destination": {"ae_title": "X", "host": "h", "port": "104"}})
    with pytest.raises(ValueError, match=r"\[model\] path is missing"):
        parse_config({**tomllib.loads(EXAMPLE), "model": {}})


def test_serve_command_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from neoseg.cli.serve import app

    runner = CliRunner()
    result = runner.invoke(app, ["--example"])
    assert result.exit_code == 0 and "[destination]" in result.output
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "missing --config" in result.output
    config = tmp_path / "node.toml"
    config.write_text(EXAMPLE.replace("/opt/neoseg/model.onnx", str(tmp_path / "none.onnx")))
    result = runner.invoke(app, ["--config", str(config)])
    assert result.exit_code == 2 and "[model] path" in result.output and "does not exist" in result.output
    config.write_text("[node\n")
    result = runner.invoke(app, ["--config", str(config)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_the_docs_show_the_example_configuration():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "dicom.md").read_text()
    assert EXAMPLE in docs


def test_a_study_left_in_the_spool_is_done_at_start(model, tiny_dataset, tmp_path):
    """A node stopped before it processed a study picks it up when it starts again."""
    from neoseg.cli.serve import build_node

    img = nib.load(find_sessions(tiny_dataset)[5].t2)
    uids = new_study()
    series = write_series(np.round(np.asarray(img.dataobj)).astype(np.int16), img.affine,
                          tmp_path / "spool" / ".work" / uids["uid"] / "x", uids)
    received: list = []
    destination = _destination(received)
    config = parse_config({
        "node": {"host": "127.0.0.1", "port": 0, "spool": str(tmp_path / "spool"), "output": str(tmp_path / "out"),
                 "settle_seconds": 0.5, "timeout_seconds": 5},
        "model": {"path": str(model), "backend": "ort-cpu"},
        "destination": {"ae_title": "DEST", "host": "127.0.0.1", "port": destination.server_address[1]},
        "atlas": {"folder": str(tiny_dataset), "per_scan": 2},  # with atlas fusion, as neoseg-infer --atlas
    })
    node = build_node(config)
    assert len(node.segmenter.atlas.atlases) == 6 and node.segmenter.atlas.per_scan == 2
    node.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not received:
            time.sleep(0.2)
    finally:
        node.stop()
        destination.shutdown()
    assert [str(s.ReferencedSeriesSequence[0].SeriesInstanceUID) for s in received] == [series]
    sidecar = json.loads(next((tmp_path / "out").rglob("*_mask.json")).read_text())
    assert len(sidecar["Model"]["atlas_fusion"]["atlases"]) == 2


def test_atlas_settings_of_the_node_are_checked(model, tmp_path):
    import tomllib

    from neoseg.cli.serve import build_node

    example = tomllib.loads(EXAMPLE)
    assert parse_config(example).atlas is None  # commented out in the example: off
    listed = parse_config({**example, "atlas": {"folder": "x", "warps": ["regular", "flexible"]}}).atlas
    assert listed.warps == "regular,flexible" and listed.per_scan == 3 and listed.weight == "0.5"
    for table, message in (({"per_scan": 2}, r"\[atlas\] folder is missing"),
                           ({"folder": "x", "per_scan": 0}, r"\[atlas\] per_scan must be"),
                           ({"folder": "x", "atlases": 2}, r"\[atlas\] has no setting 'atlases'")):
        with pytest.raises(ValueError, match=message):
            parse_config({**example, "atlas": table})
    config = parse_config({**example, "model": {"path": str(model)}, "atlas": {"folder": str(tmp_path / "none")}})
    with pytest.raises(ValueError, match=r"\[atlas\] folder .* is not a folder"):
        build_node(config)


def test_series_settings_of_the_node_are_checked():
    import tomllib

    example = tomllib.loads(EXAMPLE)
    rules = parse_config({**example, "series": {"numbers": [5], "repeats": "last"}}).rules
    assert rules.numbers == (5,) and rules.repeats == "last" and rules.explicit
    assert rules.include == () and rules.exclude == ()  # a series number alone: the default patterns dropped
    from neoseg.cli.dicom_inputs import series_rules  # the same rules as neoseg-infer's options
    assert rules == series_rules(None, None, None, [5], "last")
    for table, options in (({"numbers": []}, (None, None, None, [], "refuse")),
                           ({"description": ["t2"], "numbers": [5]}, (["t2"], None, None, [5], "refuse")),
                           ({"planes": ["Axial"], "max_voxel_size": 1.0}, (None, ["axial"], 1.0, None, "refuse"))):
        ours, theirs = parse_config({**example, "series": table}).rules, series_rules(*options)
        assert (ours.include, ours.exclude, ours.planes, ours.max_voxel, ours.numbers) == \
            (theirs.include, theirs.exclude, theirs.planes, theirs.max_voxel, theirs.numbers), table
    assert parse_config(example).rules.repeats == "refuse"  # never a silent pick by default
    for table, message in (({"series_number": 5}, r"\[series\] has no setting 'series_number'"),
                           ({"repeats": "newest"}, r"\[series\] repeats must be one of refuse, first, last"),
                           ({"numbers": 5}, r"\[series\] numbers must be a list"),
                           ({"description": [3]}, r"\[series\] description must be a list of strings")):
        with pytest.raises(ValueError, match=message):
            parse_config({**example, "series": table})


def _wait(condition, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.2)


def test_failed_studies_name_where_their_files_are_and_the_setting_that_fixes_them(model, tiny_dataset, tmp_path,
                                                                                   caplog):
    """A repeated T2w acquisition and an incomplete series: one error line each, naming the study's
    files in spool/failed and node.toml's [series] settings (not neoseg-infer's options), and no empty
    output folder; with repeats = "last" the repeated study gives the last repeat's SEG."""
    import shutil

    from neoseg.cli.serve import build_node

    caplog.set_level(logging.INFO, logger="neoseg.serve")
    img = nib.load(find_sessions(tiny_dataset)[5].t2)
    data = np.round(np.asarray(img.dataobj)).astype(np.int16)
    spool, out = tmp_path / "spool", tmp_path / "out"
    repeat, gap = new_study(), new_study()
    series = {n: write_series(data, img.affine, spool / repeat["uid"] / f"s{n}", repeat, description="T2w TSE",
                              number=n) for n in (3, 5)}
    write_series(data, img.affine, spool / gap["uid"] / "s3", gap)
    sorted((spool / gap["uid"] / "s3").iterdir())[-1].unlink()  # the last image lost: incomplete
    received: list = []
    destination = _destination(received)

    def node(**series_table):
        return build_node(parse_config({
            "node": {"host": "127.0.0.1", "port": 0, "spool": str(spool), "output": str(out), "settle_seconds": 0.5,
                     "timeout_seconds": 5},
            "model": {"path": str(model), "backend": "ort-cpu"},
            "destination": {"ae_title": "DEST", "host": "127.0.0.1", "port": destination.server_address[1]},
            "series": series_table}))

    first = node()
    first.start()
    try:
        _wait(lambda: len([r for r in caplog.records if r.levelno >= logging.ERROR]) >= 2)
    finally:
        first.stop()
    lines = {study: next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"study {study}:"))
             for study in (repeat["uid"], gap["uid"])}
    kept = spool / "failed" / repeat["uid"]
    assert lines[repeat["uid"]].startswith(f"study {repeat['uid']}: error: {kept}: 2 series pass the T2w rules")
    assert "choose one with numbers = [3] or numbers = [5]" in lines[repeat["uid"]]
    assert 'repeats = "last" in the [series] table of node.toml' in lines[repeat["uid"]]
    assert f"{spool / 'failed' / gap['uid']}" in lines[gap["uid"]] and "incomplete" in lines[gap["uid"]]
    for line in lines.values():
        assert ".work" not in line and " --" not in line and "dry-run" not in line, line
    assert kept.is_dir() and (spool / "failed" / gap["uid"]).is_dir()
    assert not out.exists() or not any(out.iterdir())  # no empty output/<StudyInstanceUID>/ of a failed study

    shutil.move(kept, spool / repeat["uid"])  # sent again, to a node that takes the last repeat
    caplog.clear()
    second = node(repeats="last")
    second.start()
    try:
        _wait(lambda: received)
    finally:
        second.stop()
        destination.shutdown()
    assert [str(s.ReferencedSeriesSequence[0].SeriesInstanceUID) for s in received] == [series[5]]
    done = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"study {repeat['uid']}:"))
    assert done.startswith(f"study {repeat['uid']}: series 5 (T2w TSE), 24 frames -> SEG"), done
    assert "warning: series 3, 5 are repeats of one acquisition; the last, series 5 (T2w TSE), is segmented" in done
