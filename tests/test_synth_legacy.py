"""The frozen first generator (anatomy v1): the committed experiment report was measured on its
cohort, so ``CohortSpec.legacy()`` must keep writing exactly the same files.

The expected SHA-256 values were recorded with the generator as it was before anatomy v2 existed
(commit 8a2f93b). A NIfTI file is hashed after decompression, so that another gzip library cannot
fail the test while the image (header and voxels) stays byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from neoseg.data.synth import CohortSpec, default_cohort_dir, generate_cohort

SPECS = {"g32": CohortSpec.legacy(n_subjects=3, grid=32), "default2": CohortSpec.legacy(n_subjects=2)}
OLD_DEFAULT_KEY = "79cb56fa6d88"  # default_cohort_dir(CohortSpec()).name before v2
EXPECTED = {
    "g32": {
        "dataset_description.json":
            "c3b4b99e1141d207d540cf4da18fae96cb0623cfbab580ed8a919ab572a0927c",
        "participants.tsv":
            "4aa5a61c99bf13c16634a0c970038299e4fb9ddbff29fc26cf6a39ad1bb48fc7",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-brain_mask.nii.gz":
            "2e13cadfdabf29890a110f7034c5b22b2e5e9a0553014944a5ba59130ababe90",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-drawem9_dseg.nii.gz":
            "e6c6a7c881ed2eaab65ba71ef592faec2d56bfd4dc0af509102ae3ade4294c18",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-restore_T2w.nii.gz":
            "0f1c606ca91045178e5d1a3d57c10a1d834e9e122fbf1676f60c0ea963f969ac",
        "sub-SYN0001/ses-2/anat/sub-SYN0001_ses-2_desc-brain_mask.nii.gz":
            "f6d31a842bb6dfb0c85804466495ad5a3080a1efb0950a02a3a5915650fd0839",
        "sub-SYN0001/ses-2/anat/sub-SYN0001_ses-2_desc-drawem9_dseg.nii.gz":
            "26b5250e8da3c0ad64c643f910ee2bf7d49873bc75f906756802b6adc197661f",
        "sub-SYN0001/ses-2/anat/sub-SYN0001_ses-2_desc-restore_T2w.nii.gz":
            "cb37886292d611473dcb0a62b84eaa60d2568d2f540c2370bfe67745b61b523f",
        "sub-SYN0001/sub-SYN0001_sessions.tsv":
            "25400a23b0da289eb0c362ecd81ebabbbc7c83192a52a7edf534ae56e99575d0",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-brain_mask.nii.gz":
            "55bc0cabf74f529da02f1929c1d4139e2eb904bd94bd90bcf038243c948226f6",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-drawem9_dseg.nii.gz":
            "5cf7e44f8ccb1d3c8008f2b5714c911fc09361f5f3db0f5904246af71d8757bd",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-restore_T2w.nii.gz":
            "5ac03b07aee9e85a6e12c9a18a0f5a7d575635d93e630717a26e46afb302322f",
        "sub-SYN0002/sub-SYN0002_sessions.tsv":
            "914789f227bc267f9139150ead19d2d20f4addc5aff5a5f65b165699a5a68211",
        "sub-SYN0003/ses-1/anat/sub-SYN0003_ses-1_desc-brain_mask.nii.gz":
            "64c4b5c175b630d222aa7059a5ec347a9f32de30e94cee5f0bbfe3f33def96ce",
        "sub-SYN0003/ses-1/anat/sub-SYN0003_ses-1_desc-drawem9_dseg.nii.gz":
            "cf7371181c7b0f8421589b85b8cfdad73374a9cd0ac60b8faaedec48a7a7f759",
        "sub-SYN0003/ses-1/anat/sub-SYN0003_ses-1_desc-restore_T2w.nii.gz":
            "dc7e27b794293fb062f0fc77a479af15f9b0dedab70e44fff83453ab5f1d28ad",
        "sub-SYN0003/sub-SYN0003_sessions.tsv":
            "c8fba0391044ff0fdd674e3e57654c74e2de040e4df715b0227859ba65918630",
    },
    "default2": {
        "dataset_description.json":
            "f5544a798d46d1be8e6fc830ef8c087e8ed98adc1127058457ec7f8092333f3d",
        "participants.tsv":
            "92af51e5fcde1a017a840b63cef11eb74f092d9bcb3b273d79cb55268b1e29a2",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-brain_mask.nii.gz":
            "9314fb28a45a516cfebe312a43e9d46ea36b89f6f9311a3e853d6bc51e32592e",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-drawem9_dseg.nii.gz":
            "c5d7e809f4cf8a40881a97f21fd2c1efd90685c2ad3af8ba3d4fb6825ed3c4c7",
        "sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-restore_T2w.nii.gz":
            "d737c20a2a9ae568ff2c83dbf9418efa1d66b029983763d45513910111248dd2",
        "sub-SYN0001/sub-SYN0001_sessions.tsv":
            "b11091ece09ebc50d684b43940471023f9f8df3d92e0561b756e69f173bd159a",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-brain_mask.nii.gz":
            "99b85ef5bd09f46868ab43376c089b0642d8818dbe53966ff1779bdcea3d7a59",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-drawem9_dseg.nii.gz":
            "37d25182882b0dd8b4c71576cbb5efe17e1bd26ac739e75ea061d4d2c6986fd6",
        "sub-SYN0002/ses-1/anat/sub-SYN0002_ses-1_desc-restore_T2w.nii.gz":
            "8580c30d7d321033c46ee541a71631a83a5c4ad6d93536201d096b10ad790532",
        "sub-SYN0002/ses-2/anat/sub-SYN0002_ses-2_desc-brain_mask.nii.gz":
            "461890093dc6874ee0fae50e5b91f3aa7add305fdb61d8fc2a7485f25b400bc3",
        "sub-SYN0002/ses-2/anat/sub-SYN0002_ses-2_desc-drawem9_dseg.nii.gz":
            "1d5288b1f559929cbffd0ca31d98e2f8141aa1a0061f5594b37a7548b985037d",
        "sub-SYN0002/ses-2/anat/sub-SYN0002_ses-2_desc-restore_T2w.nii.gz":
            "775288e66ebf60c03a475767629ffef39f09d845ccbd648b3fc5aae437e0e3f7",
        "sub-SYN0002/sub-SYN0002_sessions.tsv":
            "f86cfc0a90945c1a8043bc8827219a133a25799e48332e628c2e0072c95d3430",
    },
}


def content_hash(path) -> str:
    raw = path.read_bytes()
    return hashlib.sha256(gzip.decompress(raw) if path.name.endswith(".gz") else raw).hexdigest()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_legacy_cohort_is_byte_identical(name, tmp_path):
    root = generate_cohort(tmp_path / name, SPECS[name], progress=False)
    found = {str(p.relative_to(root)): content_hash(p) for p in sorted(root.rglob("*")) if p.is_file()}
    assert found == EXPECTED[name]


def test_legacy_cache_folder_is_unchanged_and_differs_from_v2(monkeypatch, tmp_path):
    """A v1 spec keeps the cache key of the first generator (its old caches hold the same bytes);
    every v2 field and the generator version enter the key of a v2 cohort."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    legacy = default_cohort_dir(CohortSpec.legacy())
    assert legacy.name == f"cohort-{OLD_DEFAULT_KEY}"
    new = default_cohort_dir(CohortSpec())
    assert new != legacy
    others = {default_cohort_dir(CohortSpec(folding=0.5)), default_cohort_dir(CohortSpec(intensity_jitter=0.1)),
              default_cohort_dir(CohortSpec(seed=1)), default_cohort_dir(CohortSpec.legacy(seed=1))}
    assert len(others | {new, legacy}) == 6


def test_experiment_runner_pins_the_first_cohort(monkeypatch, tmp_path):
    """``neoseg-reproduce`` regenerates the cohort of the committed reports (equal-epochs, equal-steps):
    the equal-epochs profile's spec is the one whose cache folder held that cohort before v2 existed.
    ``paper`` has no committed report and is neoseg-train's paper profile, on the same cohort."""
    from neoseg.reproduce.prepare import cohort_spec
    from neoseg.reproduce.profiles import PROFILES
    from neoseg.train.config import TrainConfig

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in ("equal-epochs", "equal-steps"):
        assert cohort_spec(PROFILES[name]).anatomy == "v1", name
    assert cohort_spec(PROFILES["paper"]).anatomy == TrainConfig.profile("paper").cohort_anatomy
    assert default_cohort_dir(cohort_spec(PROFILES["equal-epochs"])).name == f"cohort-{OLD_DEFAULT_KEY}"


def test_train_config_chooses_the_anatomy_and_old_configs_keep_v1():
    from neoseg.train.config import TrainConfig

    assert TrainConfig().cohort_anatomy == "v2"
    old = json.loads(TrainConfig().to_json())
    del old["cohort_anatomy"]  # a config.json written before anatomy v2
    assert TrainConfig.from_json(json.dumps(old)).cohort_anatomy == "v1"


def test_v2_options_are_refused_with_v1():
    with pytest.raises(ValueError, match="anatomy v2 only"):
        CohortSpec.legacy(folding=0.5).validate()
    with pytest.raises(ValueError, match="anatomy='v3'"):
        CohortSpec(anatomy="v3").validate()


def test_synth_command_chooses_the_anatomy(tmp_path):
    from neoseg.cli.synth import app
    from typer.testing import CliRunner

    runner = CliRunner()
    for anatomy, version in (("v1", "1"), ("v2", "2")):
        result = runner.invoke(app, ["--out", str(tmp_path / anatomy), "--subjects", "3", "--grid", "16",
                                     "--anatomy", anatomy])
        assert result.exit_code == 0, result.output
        description = json.loads((tmp_path / anatomy / "dataset_description.json").read_text())
        assert description["GeneratedBy"][0]["Version"] == version
    result = runner.invoke(app, ["--out", str(tmp_path / "bad"), "--subjects", "3", "--grid", "16",
                                 "--anatomy", "v1", "--folding", "0.5"])
    assert result.exit_code != 0 and "anatomy v2 only" in result.output and not (tmp_path / "bad").exists()
