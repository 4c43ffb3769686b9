"""DistributedDataParallel under torchrun: two CPU processes (gloo) train like one process.

Each rank takes its share of the same global batches and the gradients are weighted by share, so
two processes follow the single-process optimisation; the only difference on CPU is BatchNorm,
which normalises each rank's share with that share's statistics (torch's SyncBatchNorm, used on
GPUs, has no CPU kernel). Hence a tolerance rather than equality.
"""

import csv
import subprocess
import sys

import pytest
import torch

from neoseg.train import checkpoint
from neoseg.train.config import TrainConfig

SCRIPT = """
import os
import sys
import torch
torch.set_num_threads(1)
from neoseg.train.config import TrainConfig
from neoseg.train.loop import train
result = train(TrainConfig.from_json(open(sys.argv[1]).read()), sys.argv[2], progress=False)
# one file per rank: lines printed by two processes to one pipe can interleave
with open(f"{sys.argv[2]}.rank{os.environ.get('RANK', '0')}.rows", "w") as f:
    f.write(str(len(result.rows)))
"""


def _metrics(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_train_like_one(tiny_dataset, tmp_path):
    # without augmentation: per-rank BatchNorm statistics of 4-slice shares differ far more between
    # augmented slices (measured 0.075 instead of 0.01); test_augment checks that ranks augment
    # their shares exactly as one process augments the global batch
    config = TrainConfig(data=str(tiny_dataset), cache=str(tmp_path / "cache"), slice_size=32, widths=[8, 16],
                         epochs=1, batch_size=8, full_fraction=0.25, device="cpu", augment="none")
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "script.py").write_text(SCRIPT)
    single = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path / "config.json"),
                             str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "script.py"), str(tmp_path / "config.json"), str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # rank 0 evaluated and wrote; rank 1 returned no rows and wrote nothing twice
    rows = [(tmp_path / f"two.rank{r}.rows").read_text() for r in (0, 1)]
    assert rows == [str(2 * 11 * 1), "0"]  # the label map and the masks of 11 structures
    one, two = _metrics(tmp_path / "one" / "metrics.csv"), _metrics(tmp_path / "two" / "metrics.csv")
    assert [r["epoch"] for r in two] == ["1"]
    for a, b in zip(one, two):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.05)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=0.10)
    wa = checkpoint.load(tmp_path / "one" / "last.pt").model.state_dict()
    wb = checkpoint.load(tmp_path / "two" / "last.pt").model.state_dict()
    keys = [k for k in wa if wa[k].is_floating_point()]
    a, b = torch.cat([wa[k].flatten() for k in keys]), torch.cat([wb[k].flatten() for k in keys])
    assert (a - b).norm() / a.norm() < 0.05  # measured: about 0.01 (BatchNorm per rank)
    assert (tmp_path / "two" / "evaluation.csv").is_file()


def test_without_torchrun_nothing_distributed_happens():
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["existing run folder", "bad data"])
def test_when_rank_0_fails_during_setup_every_rank_stops_with_its_message(failure, tiny_dataset, tmp_path):
    """Under torchrun, rank 0 prepares the run and checks the data while the others wait; when it
    fails, the others stop at once with the same one-line message instead of waiting for the
    process group's timeout (hours)."""
    import shutil

    import nibabel as nib
    import numpy as np

    out, data = tmp_path / "run", tiny_dataset
    if failure == "existing run folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "exists and is not empty"
    else:
        data = tmp_path / "data"
        shutil.copytree(tiny_dataset, data)
        t2 = sorted(data.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))[0]
        img = nib.load(t2)
        values = np.asanyarray(img.dataobj).copy()
        values[5, 5, 5] = np.nan
        nib.save(nib.Nifti1Image(values, img.affine), t2)
        expected = f"{t2}: 1 of {values.size} voxels"
    (tmp_path / "cli.py").write_text("import torch\ntorch.set_num_threads(1)\nfrom neoseg.cli.train import main\n"
                                      "if __name__ == '__main__':  # the atlas registrations' spawned workers import it\n"
                                      "    main()\n")
    logs = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--log-dir", str(logs), "--redirects", "3", str(tmp_path / "cli.py"), "--out", str(out),
                           "--data", str(data), "--epochs", "1", "--slice-size", "32", "--widths", "4,8",
                           "--device", "cpu", "--quiet"], capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    for rank in (0, 1):
        (log,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("neoseg-train: error: ")]  # beside rank 0's log lines
        assert len(errors) == 1 and lines[-1] == errors[0] and expected in errors[0], (rank, lines)
        assert rank == 0 or len(lines) == 1, lines
    if failure == "existing run folder":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


MEMBERS_SCRIPT = """
import os
import sys
import torch
torch.set_num_threads(1)
from neoseg.train.config import TrainConfig
from neoseg.train.members import train_members
result = train_members(TrainConfig.from_json(open(sys.argv[1]).read()), __import__("pathlib").Path(sys.argv[2]),
                       progress=False)
with open(f"{sys.argv[2]}.rank{os.environ.get('RANK', '0')}.rows", "w") as f:
    f.write(str(len(result.rows)))
"""


def test_two_gloo_processes_train_every_member_in_one_process_group(tiny_dataset, tmp_path):
    config = TrainConfig(data=str(tiny_dataset), cache=str(tmp_path / "cache"), slice_size=32, widths=[8, 16],
                         epochs=1, batch_size=8, full_fraction=0.25, device="cpu", augment="none", members=2)
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "script.py").write_text(MEMBERS_SCRIPT)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "script.py"), str(tmp_path / "config.json"), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "evaluation.csv").is_file() and (run / "member-1" / "evaluation.csv").is_file()
    assert (run / "ensemble-evaluation.csv").is_file()
    assert [(tmp_path / f"run.rank{r}.rows").read_text() for r in (0, 1)] == [str(2 * 11 * 1), "0"]
