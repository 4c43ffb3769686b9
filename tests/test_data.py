import math

import nibabel as nib
import numpy as np
import pytest

from neoseg.core.hierarchy import UNKNOWN, builtin
from neoseg.data.dhcp import find_sessions
from neoseg.data.splits import choose_fully_labelled, make_split, split_subjects
from neoseg.train.dataset import SliceDataset
from neoseg.train.volumes import VolumeCache


def test_reader_finds_sessions_ages_and_groups(tiny_dataset):
    sessions = find_sessions(tiny_dataset)
    assert [s.subject for s in sessions] == [f"T{i:02d}" for i in range(6)]
    assert sessions[0].session == "1" and sessions[0].scan_age == 30.0 and sessions[0].age_group == "preterm"
    assert sessions[4].scan_age == 38.0 and sessions[4].age_group == "term"
    assert sessions[0].labels.name == "sub-T00_ses-1_desc-drawem9_dseg.nii.gz"


def test_reader_without_sessions_tsv_gives_unknown_age_and_says_so(tmp_path, tiny_dataset, caplog):
    import shutil

    for sub in ("sub-T00", "sub-T01", "sub-T02"):
        shutil.copytree(tiny_dataset / sub, tmp_path / sub)
    (tmp_path / "sub-T00" / "sub-T00_sessions.tsv").unlink()
    tsv = tmp_path / "sub-T01" / "sub-T01_sessions.tsv"
    tsv.write_text("session_id\tscan_age\n1\tn/a\n")
    s, t, u = find_sessions(tmp_path)
    assert math.isnan(s.scan_age) and s.age_group == "unknown" and math.isnan(t.scan_age)
    assert not math.isnan(u.scan_age)
    assert "2 of 3 session(s) without a scan age" in caplog.text and "sub-T00_ses-1, sub-T01_ses-1;" in caplog.text
    find_sessions(tmp_path)
    assert caplog.text.count("without a scan age") == 1  # once per run


def test_reader_names_the_scans_and_annotations_it_leaves_out_and_why(tmp_path, tiny_dataset, caplog):
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "data")
    root = tmp_path / "data"
    assert len(find_sessions(root)) == 6 and "not used" not in caplog.text  # a clean dataset: nothing to say
    anat = [s.t2.parent for s in find_sessions(root)]
    next(anat[0].glob("*_dseg.nii.gz")).unlink()  # a scan without its annotation
    next(anat[1].glob("*_T2w.nii.gz")).unlink()  # an annotation without its scan
    label = next(anat[2].glob("*_dseg.nii.gz"))  # a label map saved as .nii, and so its scan unannotated
    nib.save(nib.load(label), label.with_name(label.name.removesuffix(".gz")))
    label.unlink()
    (anat[3] / "sub-T03_ses-1_T1w.nii.gz").write_bytes(b"")  # what a release holds besides: not named
    mask = next(anat[4].glob("*_dseg.nii.gz"))  # a session annotated by a mask, read where masks are not
    mask.rename(anat[4] / "sub-T04_ses-1_desc-tcv_mask.nii.gz")
    with caplog.at_level("WARNING", logger="neoseg.data"):
        assert len(find_sessions(root)) == 2
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"{root}: 5 scan or annotation file(s) not used: ")
    assert "(a T2 with masks only (sub-T04_ses-1_desc-tcv_mask.nii.gz): this command needs a *_desc-drawem9" in lines[0]
    assert "sub-T00/ses-1/anat/sub-T00_ses-1_desc-restore_T2w.nii.gz (a T2 without an annotation" in lines[0]
    assert "sub-T01_ses-1_desc-drawem9_dseg.nii.gz (an annotation without its T2 sub-T01_ses-1_desc-restore" \
           in lines[0]
    assert "sub-T02_ses-1_desc-drawem9_dseg.nii (not read:" in lines[0] and "T1w" not in lines[0]
    caplog.clear()
    find_sessions(root)  # read again in the same run: said once
    assert "not used" not in caplog.text


def test_reader_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_sessions(tmp_path / "missing")
    with pytest.raises(ValueError, match="sub-\\*/ses-\\*/anat"):
        find_sessions(tmp_path)


def test_split_is_by_subject_and_deterministic():
    subjects = [f"S{i}" for i in range(50)]
    train, val, test = split_subjects(subjects, seed=3)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert set(train) | set(val) | set(test) == set(subjects) and not set(train) & set(test)
    assert split_subjects(subjects, seed=3) == (train, val, test)
    assert split_subjects(subjects, seed=4) != (train, val, test)


def test_fully_labelled_draws():
    train = [f"S{i}" for i in range(40)]
    assert len(choose_fully_labelled(train, 0.02)) == 1  # at least one
    assert len(choose_fully_labelled(train, 0.1)) == 4
    assert choose_fully_labelled(train, 0.1, draw=1) == choose_fully_labelled(train, 0.1, draw=1)
    assert choose_fully_labelled(train, 0.1, draw=1) != choose_fully_labelled(train, 0.1, draw=2)
    assert choose_fully_labelled(train, 1.0) == frozenset(train)
    with pytest.raises(ValueError):
        choose_fully_labelled(train, 1.5)


def test_sessions_of_a_subject_stay_together(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    shutil.copytree(root / "sub-T01" / "ses-1", root / "sub-T01" / "ses-2")
    for f in (root / "sub-T01" / "ses-2" / "anat").iterdir():
        f.rename(f.with_name(f.name.replace("ses-1", "ses-2")))
    sessions = find_sessions(root)
    for seed in range(5):
        split = make_split(sessions, 0.5, seed=seed)
        sides = [name for name, part in (("train", split.train), ("val", split.val), ("test", split.test))
                 if any(s.subject == "T01" for s in part)]
        assert len(sides) == 1


def test_cache_and_slice_dataset_encode_full_and_partial(tiny_dataset, tmp_path):
    h = builtin()
    sessions = find_sessions(tiny_dataset)[:2]
    cache = VolumeCache(tmp_path / "cache", axis=0, size=32, hierarchy=builtin())
    stacks = [cache.get(s) for s in sessions]
    assert stacks[0].image.dtype == np.float16 and isinstance(stacks[0].image, np.memmap)
    assert stacks[0].image.shape[1:] == (32, 32) and 0 <= stacks[0].image.min() and stacks[0].image.max() <= 1
    assert stacks[0].spacing == (2.0, 2.0, 2.0)
    # every labelled voxel survives the crop/pad (24 -> 32 pads)
    labels = np.asanyarray(nib.load(sessions[0].labels).dataobj)
    assert np.bincount(np.asarray(stacks[0].labels).ravel(), minlength=10)[1:].tolist() == \
        np.bincount(labels.ravel(), minlength=10)[1:].tolist()
    ds = SliceDataset(stacks, h, partial=[False, True])
    full = [ds[i][1] for i in range(len(ds)) if ds.index[i][0] == 0]
    part = [ds[i][1] for i in range(len(ds)) if ds.index[i][0] == 1]
    assert not any((t == UNKNOWN).any() for t in full)
    part = np.stack([t.numpy() for t in part])
    tcv = part[:, 10] == 1
    assert tcv.any() and (part[:, [2, 3, 7]][np.repeat(tcv[:, None], 3, 1)] == UNKNOWN).all()
    assert (part[:, [2, 3, 7]][np.repeat(~tcv[:, None], 3, 1)] == 0).all()
    # a second cache lookup maps the same files instead of rebuilding
    mtime = next((tmp_path / "cache").glob("*.image.npy")).stat().st_mtime_ns
    cache.get(sessions[0])
    assert next((tmp_path / "cache").glob("*.image.npy")).stat().st_mtime_ns == mtime


def test_a_cache_entry_built_twice_at_once_is_never_replaced(tiny_dataset, tmp_path):
    """Two runs sharing a cache may both miss an entry and build it; the second build must leave
    the first one's files in place (replacing them leaves a moment in which a reader finds none)."""
    session = find_sessions(tiny_dataset)[0]
    cache = VolumeCache(tmp_path / "cache", axis=0, size=32, hierarchy=builtin())
    first = cache.get(session)
    files = sorted((tmp_path / "cache").iterdir())
    inodes = [f.stat().st_ino for f in files]
    cache._build(session, tmp_path / "cache" / cache._key(session))  # the other run's build
    assert sorted((tmp_path / "cache").iterdir()) == files and [f.stat().st_ino for f in files] == inodes
    assert np.array_equal(cache.get(session).labels, first.labels)
