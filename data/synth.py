"""The built-in synthetic neonatal cohort: procedural T2 scans with drawem9 labels, dHCP layout.

Subjects are preterm (28-36 weeks PMA) or term (37-44 weeks) or both (a preterm session and a later
term session of the same, grown brain), as in the paper's dHCP cohort. Everything is decided by
:class:`CohortSpec`; the same spec gives byte-identical files. Anatomy: :mod:`.anatomy`,
contrast: :mod:`.synth_contrast`. Layout written::

    ROOT/dataset_description.json, ROOT/participants.tsv
    ROOT/sub-SYN0001/sub-SYN0001_sessions.tsv               (session_id, scan_age)
    ROOT/sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-restore_T2w.nii.gz    float32
    ROOT/sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-drawem9_dseg.nii.gz   uint8
    ROOT/sub-SYN0001/ses-1/anat/sub-SYN0001_ses-1_desc-brain_mask.nii.gz     uint8
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .anatomy.brain import Brain
from .anatomy.deep import seal_nuclei
from .anatomy.subject import ANATOMIES, Anatomy, Pose
from .anatomy.tissues import LABEL_OF_TISSUE
from .synth_contrast import render_t2

# The generator version of each anatomy: bump when its anatomy or contrast changes, so cached cohorts
# are rebuilt. "v1" is frozen: it must keep producing the cohort of the committed experiment report.
GENERATOR_VERSION = {"v1": "1", "v2": "2"}
V1_FIELDS = ("n_subjects", "grid", "fov_mm", "seed", "both_sessions_fraction")  # the v1 spec, as it was
PRETERM_WEEKS = (28.0, 36.0)
TERM_WEEKS = (37.0, 44.0)
AGE_LIMITS = (26.0, 46.0)
CHUNK_VOXELS = 2_000_000  # voxels drawn at once (bounds memory at large grids)
DESCRIPTION_NAME = "neoseg synthetic neonatal cohort"


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines the cohort.

    ``anatomy="v2"`` (the default) draws separate deep grey nuclei split by the internal capsule,
    named primary sulci and random secondary/tertiary folds that deepen with age, and a cerebellum
    with a cortex, a white-matter core and lobules of varying depth. ``anatomy="v1"`` is the first
    generator, kept byte for byte (the cohort of the committed experiment report; see
    :meth:`legacy`); the realism knobs below apply to v2 only.
    """

    n_subjects: int = 40
    grid: int = 64  # voxels per side; spacing = fov_mm / grid (64 -> 2 mm, 256 -> 0.5 mm as dHCP)
    fov_mm: float = 128.0
    seed: int = 0
    both_sessions_fraction: float = 0.3  # subjects with a preterm and a term session
    anatomy: str = "v2"  # "v1": the first generator, byte for byte; "v2": the realistic one
    folding: float = 1.0  # v2: sulcal depth relative to the default (0 = lissencephalic)
    intensity_jitter: float = 0.03  # v2: per-session log-normal spread of each tissue's mean T2

    @classmethod
    def legacy(cls, **fields) -> CohortSpec:
        """The first generator (``anatomy="v1"``), which reproduces cohorts made before v2 byte for byte."""
        return cls(anatomy="v1", **fields)

    def validate(self) -> None:
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects={self.n_subjects}: need at least 1 subject")
        _check_grid(self.grid, self.fov_mm)
        if not 0.0 <= self.both_sessions_fraction <= 1.0:
            raise ValueError(f"both_sessions_fraction={self.both_sessions_fraction}: must lie in [0, 1]")
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"anatomy={self.anatomy!r}: choose one of {', '.join(ANATOMIES)}")
        if not 0.0 <= self.folding <= 2.0:
            raise ValueError(f"folding={self.folding}: must lie in [0, 2] (1 = the default depth of the sulci)")
        if not 0.0 <= self.intensity_jitter <= 0.3:
            raise ValueError(f"intensity_jitter={self.intensity_jitter}: must lie in [0, 0.3]")
        if self.anatomy == "v1":
            changed = [f for f in ("folding", "intensity_jitter") if getattr(self, f) != getattr(CohortSpec, f)]
            if changed:
                raise ValueError(f"anatomy v1 takes no {' or '.join(changed)}: that knob is for anatomy v2 only; "
                                 f"leave it at its default with v1, or use v2")

    def options(self) -> dict:
        """The v2 realism knobs, as :func:`generate_subject` takes them."""
        return {"anatomy": self.anatomy, "folding": self.folding, "intensity_jitter": self.intensity_jitter}


@dataclass(frozen=True)
class SessionPlan:
    session_id: str  # numeric, without "ses-"
    age_weeks: float  # one decimal
    seed: int  # imaging randomness (pose, contrast jitter, bias, noise)


@dataclass(frozen=True)
class SubjectPlan:
    subject_id: str  # without "sub-"
    anatomy_seed: int
    sessions: tuple[SessionPlan, ...]


def _check_grid(grid: int, fov_mm: float) -> None:
    if not (isinstance(grid, (int, np.integer)) and 16 <= grid <= 512):
        raise ValueError(f"grid={grid}: must be an integer in [16, 512] (64 -> 2 mm voxels, 256 -> 0.5 mm)")
    if not 64.0 <= fov_mm <= 256.0:
        raise ValueError(f"fov_mm={fov_mm}: must lie in [64, 256] mm; a neonatal head needs about 128")


def affine(grid: int, fov_mm: float = 128.0) -> np.ndarray:
    """Diagonal RAS+ voxel-to-mm affine with the origin at the volume centre."""
    spacing = fov_mm / grid
    out = np.diag([spacing, spacing, spacing, 1.0])
    out[:3, 3] = -(grid - 1) / 2 * spacing
    return out


def generate_subject(rng: np.random.Generator, age_weeks: float, grid: int, fov_mm: float = 128.0,
                     anatomy_seed: int | None = None, anatomy: str = "v2", folding: float = 1.0,
                     intensity_jitter: float = 0.03) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic T2 scan at ``age_weeks`` PMA on a ``grid``³ volume spanning ``fov_mm``.

    The brain is drawn from ``anatomy_seed`` when given (so sessions of one subject share their
    anatomy and differ by growth), else from ``rng``; pose, contrast jitter, bias and noise always
    come from ``rng``. Axes: 0 left->right, 1 posterior->anterior, 2 inferior->superior, voxel
    grid as :func:`affine`. ``anatomy``, ``folding`` and ``intensity_jitter``: as :class:`CohortSpec`.
    Returns ``(t2 float32, labels uint8 drawem9, brain_mask uint8)``.
    """
    _check_grid(grid, fov_mm)
    if not AGE_LIMITS[0] <= age_weeks <= AGE_LIMITS[1]:
        raise ValueError(f"age_weeks={age_weeks}: the model covers {AGE_LIMITS[0]}-{AGE_LIMITS[1]} weeks PMA")
    CohortSpec(grid=grid, fov_mm=fov_mm, anatomy=anatomy, folding=folding, intensity_jitter=intensity_jitter).validate()
    anatomy_rng = rng if anatomy_seed is None else np.random.default_rng(anatomy_seed)
    brain = Brain(Anatomy.random(anatomy_rng, anatomy), float(age_weeks), Pose.random(rng), int(grid),
                  float(fov_mm), folding=folding)
    tissue = np.empty((grid,) * 3, np.uint8)
    texture = np.empty((grid,) * 3, np.float32)
    step = max(1, CHUNK_VOXELS // (grid * grid))
    for start in range(0, grid, step):
        sl = slice(start, min(grid, start + step))
        tissue[sl], texture[sl] = brain.chunk(sl)
    if anatomy == "v2":
        seal_nuclei(tissue)
    labels = LABEL_OF_TISSUE[tissue]
    t2 = render_t2(tissue, texture, float(age_weeks), rng, anatomy, intensity_jitter)
    return t2, labels, (labels > 0).astype(np.uint8)


# ---- cohort plan ------------------------------------------------------------------------------
def plan_cohort(spec: CohortSpec) -> list[SubjectPlan]:
    """Subjects, their sessions and ages, and every seed, from ``spec`` alone."""
    spec.validate()
    root = np.random.SeedSequence(spec.seed)
    rng = np.random.default_rng(root.spawn(1)[0])
    n_both = round(spec.both_sessions_fraction * spec.n_subjects)
    n_preterm = (spec.n_subjects - n_both + 1) // 2
    groups = np.array(["both"] * n_both + ["preterm"] * n_preterm
                      + ["term"] * (spec.n_subjects - n_both - n_preterm))
    groups = groups[rng.permutation(spec.n_subjects)]
    subjects = []
    for i, (group, seq) in enumerate(zip(groups, root.spawn(spec.n_subjects + 1)[1:])):
        sub_rng = np.random.default_rng(seq)
        ages = []
        if group in ("preterm", "both"):
            ages.append(round(float(sub_rng.uniform(*PRETERM_WEEKS)), 1))
        if group in ("term", "both"):
            ages.append(round(float(sub_rng.uniform(*TERM_WEEKS)), 1))
        seeds = sub_rng.integers(0, 2**63, len(ages) + 1)
        sessions = tuple(SessionPlan(str(k + 1), age, int(s)) for k, (age, s) in enumerate(zip(ages, seeds[1:])))
        subjects.append(SubjectPlan(f"SYN{i + 1:04d}", int(seeds[0]), sessions))
    return subjects


def _session_files(root: Path, sub: SubjectPlan, ses: SessionPlan) -> dict[str, Path]:
    stem = f"sub-{sub.subject_id}_ses-{ses.session_id}"
    anat = root / f"sub-{sub.subject_id}" / f"ses-{ses.session_id}" / "anat"
    return {kind: anat / f"{stem}_desc-{kind}.nii.gz"
            for kind in ("restore_T2w", "drawem9_dseg", "brain_mask")}


def _description(spec: CohortSpec) -> dict:
    """dataset_description.json; its ``GeneratedBy`` (every field of the spec and the generator
    version) is the cache key. A v1 spec gives exactly the description of the first generator."""
    params = asdict(spec)
    if spec.anatomy == "v1":
        params = {k: params[k] for k in V1_FIELDS}
    return {"Name": DESCRIPTION_NAME, "BIDSVersion": "1.8.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "neoseg.data.synth", "Version": GENERATOR_VERSION[spec.anatomy],
                             "Parameters": params}]}


def default_cohort_dir(spec: CohortSpec = CohortSpec()) -> Path:
    """``$XDG_CACHE_HOME/neoseg/cohort-<hash of spec and generator version>`` (``~/.cache`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = json.dumps(_description(spec)["GeneratedBy"], sort_keys=True)
    return cache / "neoseg" / f"cohort-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_complete_cohort(root: Path, spec: CohortSpec) -> bool:
    """True if ``root`` holds every file of the cohort made by this generator from ``spec``."""
    try:
        found = json.loads((root / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return False
    if found.get("GeneratedBy") != _description(spec)["GeneratedBy"]:
        return False
    return all(p.is_file() for sub in plan_cohort(spec) for ses in sub.sessions
               for p in _session_files(root, sub, ses).values())


# ---- writing ------------------------------------------------------------------------------------
def _write_subject(root: Path, sub: SubjectPlan, spec: CohortSpec) -> None:
    import nibabel as nib
    from neoseg.core.io import save_nifti, write_text

    matrix = affine(spec.grid, spec.fov_mm)
    for ses in sub.sessions:
        volumes = generate_subject(np.random.default_rng(ses.seed), ses.age_weeks, spec.grid, spec.fov_mm,
                                   anatomy_seed=sub.anatomy_seed, **spec.options())
        for array, path in zip(volumes, _session_files(root, sub, ses).values()):
            image = nib.Nifti1Image(array, matrix)
            image.header.set_xyzt_units("mm")
            image.set_qform(matrix, code=1)
            image.set_sform(matrix, code=1)
            save_nifti(image, path)
    rows = "".join(f"{s.session_id}\t{s.age_weeks:.1f}\n" for s in sub.sessions)
    write_text(root / f"sub-{sub.subject_id}" / f"sub-{sub.subject_id}_sessions.tsv", "session_id\tscan_age\n" + rows)


def _share(tmp: Path) -> None:
    """Give the built tree ordinary permissions (temporary files and folders are created 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp, *tmp.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _install(tmp: Path, root: Path, spec: CohortSpec) -> None:
    """Move the finished cohort ``tmp`` to ``root``, replacing what is there (the caller checked)."""
    if root.exists() and is_complete_cohort(root, spec):  # a concurrent run finished first
        shutil.rmtree(tmp)
        return
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "cohort")
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old)


def generate_cohort(root: Path, spec: CohortSpec = CohortSpec(), overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Write the cohort of ``spec`` to ``root`` and return ``root``.

    A ``root`` that already holds the complete cohort of the same spec is reused at once. A
    non-empty ``root`` holding anything else raises :class:`FileExistsError` unless ``overwrite``.
    The cohort is built in a hidden sibling folder and renamed into place when complete, so an
    interrupted run never leaves a partial cohort at ``root``.
    """
    root = Path(root).expanduser()
    spec.validate()
    if root.exists():
        if is_complete_cohort(root, spec):
            return root
        if not root.is_dir() or (any(root.iterdir()) and not overwrite):
            raise FileExistsError(
                f"{root} exists and is not the synthetic cohort of {spec}; choose another folder, "
                f"remove it, or pass overwrite=True to replace it")
    plan = plan_cohort(spec)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.part-", dir=root.parent))
    try:
        from neoseg.core.io import write_text

        subjects = plan
        if progress:
            from tqdm import tqdm

            subjects = tqdm(plan, desc="synthetic cohort", unit="subject", disable=None)  # no bar in a log file
        for sub in subjects:
            _write_subject(tmp, sub, spec)
        write_text(tmp / "participants.tsv", "participant_id\n" + "".join(f"sub-{s.subject_id}\n" for s in plan))
        write_text(tmp / "dataset_description.json", json.dumps(_description(spec), indent=2) + "\n")
        _share(tmp)
        _install(tmp, root, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def cohort_sessions(spec: CohortSpec = CohortSpec(), progress: bool = False) -> list:
    """The sessions (:class:`~neoseg.data.dhcp.Session`) of the built-in cohort ``spec``, generated
    into its default folder the first time, then reused."""
    from .dhcp import find_sessions

    return find_sessions(generate_cohort(default_cohort_dir(spec), spec, progress=progress))
