"""``neoseg-eval``: evaluate a checkpoint or an exported model on the sessions of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from neoseg.runtime.backend import BackendUnavailable

from .common import ATLAS_WARPS_HELP, make_app, as_user_error, atlas_fusion, setup_logging, user_errors

app = make_app()


@app.command()
def evaluate(
    models: Annotated[list[Path], typer.Argument(exists=True, metavar="MODEL",
                                                 help="Model file: best.pt from neoseg-train, or an exported "
                                                      ".onnx model, or a neoseg-train run folder (all its "
                                                      "--members); several best.pt: their ensemble (the mean "
                                                      "of their probabilities).")],
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset folder. Default: the model's own data.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Sessions to evaluate: test, val, train (the model's split) or all. "
                                                  "Default: test, or all with --data.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", dir_okay=False,
                                                help="Also write per-volume rows to this CSV file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite",
                                            help="Replace an existing --out file.")] = False,
    thresholds: Annotated[Optional[str], typer.Option(help="One value or one per channel, comma-separated, in "
                                                      "[1e-6, 1 - 1e-6]. Default: the model's.")] = None,
    backend: Annotated[str, typer.Option(help="An .onnx model's backend (as neoseg-infer).")] = "auto",
    device: Annotated[str, typer.Option(help="A checkpoint's device: auto, cpu, cuda or cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    atlas: Annotated[Optional[str], typer.Option(
        metavar="DIR|run", show_default=False,
        help="Atlas fusion as neoseg-infer --atlas: the fully labelled sessions of a dHCP-layout folder, or "
             "'run': those the model's run trained on; either less the sessions evaluated.")] = None,
    atlas_per_scan: Annotated[int, typer.Option(min=1, help="--atlas: the atlases registered to each scan.")] = 3,
    atlas_weight: Annotated[str, typer.Option(help="--atlas: the atlases' share of each child's probability, "
                                                   "as neoseg-infer's; or 'choose': per child the best of 0, "
                                                   "0.25, 0.5 and 0.75 on the sessions evaluated (--subset "
                                                   "val).")] = "0.5",
    atlas_warps: Annotated[str, typer.Option(help=ATLAS_WARPS_HELP)] = "regular",
) -> None:
    """Dice, HD95/HD100 (mm) and volume difference per structure, mean ± std per age group, of the
    label map (_dseg) and of the per-structure masks, each scan segmented as neoseg-infer does.
    Partially labelled sessions score only the structures they know."""
    setup_logging()
    with user_errors("neoseg-eval"), as_user_error(BackendUnavailable):
        from neoseg.train.members import run_checkpoints

        models = run_checkpoints(models)
        subset = subset or ("all" if data is not None else "test")
        if subset not in ("test", "val", "train", "all"):
            raise ValueError(f"--subset must be test, val, train or all, got '{subset}'")
        if out is not None:
            from neoseg.core.io import check_can_write, check_writable
            check_can_write(check_writable(out, overwrite))
        choose = atlas_weight == "choose"
        if choose and atlas is None:
            raise ValueError("--atlas-weight choose needs --atlas DIR|run")
        if choose and data is None and subset != "val":
            raise ValueError("--atlas-weight choose picks the weights on the sessions evaluated: pass --atlas and "
                             "--subset val (never the test sessions)")
        from neoseg.train.evaluate import evaluate_sessions, report, write_rows

        segmenter, config = _segmenter(models, thresholds, backend, device, data is None and subset != "all")
        sessions = _sessions(config, data, subset, segmenter.info.hierarchy)
        if atlas is not None:
            segmenter.atlas = _atlas_fusion(atlas, config, sessions, segmenter.info.hierarchy, atlas_per_scan,
                                            "0.5" if choose else atlas_weight, atlas_warps)
        if choose:
            from neoseg.train import atlas_weights

            chosen, by_weight = atlas_weights.choose_weights(segmenter, sessions, progress=not quiet)
            if not by_weight[0.0]:
                raise ValueError(f"no structure of the {len(sessions)} session(s) is known at every voxel; choose "
                                 f"the weights on sessions with full label maps")
            if out is not None:
                write_rows(out, [{**r, "atlas_weight": w} for w, rows in by_weight.items() for r in rows], overwrite)
            typer.echo(atlas_weights.report(chosen, by_weight))
            return
        rows = evaluate_sessions(segmenter, sessions, progress=not quiet)
        if not rows:
            raise ValueError(f"no structure of the {len(sessions)} session(s) is known at every voxel; evaluate "
                             f"sessions with full label maps or parent masks")
        if out is not None:
            write_rows(out, rows, overwrite)
    typer.echo(report(rows, hierarchy=segmenter.info.hierarchy))


def _segmenter(models: list[Path], thresholds: str | None, backend: str, device: str, own_split: bool):
    """The runtime's segmenter over ``models`` (one .onnx, or checkpoints: one, or an ensemble) and
    the training config it records (an ensemble's first member's; with ``own_split`` the members
    must have held out the same scans)."""
    import dataclasses

    from neoseg.runtime.model import parse_thresholds
    from neoseg.runtime.pipeline import Segmenter
    from neoseg.train.config import TrainConfig

    if len(models) > 1 and any(m.suffix == ".onnx" for m in models):
        raise ValueError(f"{len(models)} models given, one an .onnx: an ensemble is made of best.pt checkpoints "
                         f"(export it with neoseg-export A/best.pt B/best.pt -o ensemble.onnx)")
    model = models[0]
    if model.suffix == ".onnx":
        from neoseg.runtime.backends import open_backend

        opened = open_backend(model, backend)
        if thresholds:
            opened.info = dataclasses.replace(opened.info, thresholds=tuple(
                parse_thresholds(thresholds, len(opened.info.hierarchy))))
        return Segmenter(opened), TrainConfig.from_json(opened.info.config)
    from neoseg.train.evaluate import checkpoint_segmenter

    return checkpoint_segmenter(models, device, thresholds, own_split)


def _sessions(config, data: Path | None, subset: str, hierarchy) -> list:
    """The sessions of ``subset`` of ``data`` (default: the model's own data), split as in training;
    ``hierarchy``: the model's own (its training config may name a file that is elsewhere now)."""
    import dataclasses

    from neoseg.train.config import dataset_sessions
    from neoseg.train.recipes import dataset_split

    if data is not None:
        config = dataclasses.replace(config, data=str(data))
    if subset == "all":
        return dataset_sessions(config, hierarchy=hierarchy)
    return list(getattr(dataset_split(config, hierarchy=hierarchy), subset))


def _atlas_fusion(atlas: str, config, evaluated: list, hierarchy, per_scan: int, weight: str, warps: str):
    """``--atlas``: a folder's fully labelled sessions, or (``run``) the fully labelled training
    sessions of the model's own split; either less the evaluated ones."""
    from neoseg.train.evaluate import run_atlas_fusion

    if atlas != "run":
        return atlas_fusion(Path(atlas), hierarchy, per_scan, weight, warps, exclude={s.key for s in evaluated})
    return run_atlas_fusion(config, hierarchy, per_scan, weight, warps, exclude={s.key for s in evaluated})


def main() -> None:
    app()
