"""The runs of the grid: one :class:`RunSpec` per training run, in the order they are started."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .profiles import Profile


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    model: str  # unet | segformer
    kind: str  # supervised | semi | partial
    loss: str
    fraction: float  # fully labelled fraction of the training subjects
    draw: int
    reduction: str = "mean"
    budget: int = 1  # times the profile's training steps
    self_training: bool = False  # beyond the paper: an EMA teacher fills in the unknown children
    self_train_after: int | None = None  # from this epoch on; None: once the plain loss plateaus
    select: str = "val-loss"  # or child-dice
    # beyond the paper (issue 19), each mapped onto the TrainConfig field of the same name only when set
    from_iuc: bool = False  # start from the best weights of the IUC run of the same fraction and draw
    atlas: str = "none"  # propagate | pairs | both: the fully labelled subjects registered to the partial scans
    atlas_confidence: float | None = None  # propagate: the share of the parent a child needs; None: the default
    atlas_warps: tuple[str, ...] = ()  # the registrations each atlas gets; (): the default
    weight_ema: float = 0.0  # validate, select and save an EMA of the weights (decay per step); 0: off
    full_share: float = 0.0  # share of each batch's slices from fully labelled sessions; 0: plain shuffle
    augment: str = "none"  # "standard": neoseg-train's policy without the curve; the paper's rows train without
    fusion: tuple[str, ...] = ()  # atlas fusion at inference with these warps: the run without it, evaluated with it
    seed: int = 0  # the training seed, the draw's split kept: a member of an ensemble row
    members: int = 1  # an evaluation row: the runs of seeds 0..members-1, their probabilities averaged

    @property
    def recipe(self) -> str:
        """The loss and what is added to it, as the report's tables name it: e.g. labelset+st, or
        labelset+st5 for self-training from epoch 6 on, iuc+atlas-both+share25+aug."""
        st = "" if not self.self_training else f"+st{self.self_train_after or ''}"
        return (self.loss + st + ("+child" if self.select == "child-dice" else "")
                + ("+from-iuc" if self.from_iuc else "") + (f"+atlas-{self.atlas}" if self.atlas != "none" else "")
                + (f"+conf{self.atlas_confidence * 100:g}" if self.atlas_confidence else "")
                + (f"+warps-{'-'.join(self.atlas_warps)}" if self.atlas_warps else "")
                + ("+wema" if self.weight_ema else "")
                + (f"+share{self.full_share * 100:g}" if self.full_share else "")
                + ("+aug" if self.augment != "none" else "") + (f"+seed{self.seed}" if self.seed else "")
                + (f"+ens{self.members}" if self.members > 1 else "") + _fusion_suffix(self.fusion))

    @property
    def name(self) -> str:
        loss = self.recipe.replace("+", "-") + ("-observed" if self.reduction == "observed" else "") + \
            (f"-x{self.budget}" if self.budget != 1 else "")
        return f"{self.model}-{self.kind}-{loss}-f{round(self.fraction * 100):03d}-d{self.draw}"

    @property
    def evaluates(self) -> bool:
        """Whether the run trains nothing: trained runs evaluated again, with atlas fusion or as an ensemble."""
        return bool(self.fusion) or self.members > 1

    @property
    def needs(self) -> tuple[str, ...]:
        """The runs this one starts from: the semi-supervised fine-tuning's supervised run, the IUC run
        of a run ``from_iuc``, or the trained runs an evaluation run evaluates (its ensemble's members)."""
        if self.evaluates:
            return tuple(dataclasses.replace(self, fusion=(), members=1, seed=s).name for s in range(self.members))
        if self.from_iuc:
            return (RunSpec(self.model, "partial", "iuc", self.fraction, self.draw).name,)
        if self.kind != "semi":
            return ()
        return (dataclasses.replace(self, kind="supervised", loss="bce", reduction="mean", budget=1).name,)


def _fusion_suffix(warps: tuple[str, ...]) -> str:
    if not warps:
        return ""
    return "+fusion" if tuple(warps) == ("regular",) else "+fusion-" + "-".join(warps)


GRIDS = ("headline", "full", "atlas")
FULL_SHARE = 0.25  # the atlas grid's share of fully labelled slices per batch, where a recipe sets one
ENSEMBLE = 3  # the atlas grid's ensemble rows: the pairs run trained with this many seeds, averaged
FUSION_WARPS = ("regular",)  # the atlas grid's fusion at inference (neoseg-eval --atlas run): the warps of each atlas
WEIGHT_EMA = 0.995  # the atlas grid's weight average, where a recipe sets one: about 200 steps, 1.5 epochs at 2 %


def plan(profile: Profile) -> list[RunSpec]:
    """The runs of the profile's grid, in the order they are started."""
    if profile.grid not in GRIDS:
        raise ValueError(f"unknown grid '{profile.grid}'; available: {', '.join(GRIDS)}")
    return {"headline": plan_headline, "full": plan_full, "atlas": plan_atlas}[profile.grid](profile)


def select(runs: list[RunSpec], only: str | None) -> list[RunSpec]:
    """The runs whose name contains any of the comma-separated texts of ``only`` (all for None), with
    the runs they start from, in the grid's order."""
    if not only:
        return list(runs)
    texts = [t.strip() for t in only.split(",") if t.strip()]
    chosen = {r.name for r in runs if any(t in r.name for t in texts)}
    if not chosen:
        raise ValueError(f"--only {only} matches no run of the grid; run names look like {runs[0].name}")
    return with_needs(runs, chosen)


def with_needs(runs: list[RunSpec], names: set[str], have: set[str] = frozenset()) -> list[RunSpec]:
    """The runs of ``runs`` named in ``names`` with the runs they start from, as far as those are
    in ``runs`` and not in ``have``, in the order of ``runs``."""
    by_name = {r.name: r for r in runs}
    chosen, wanted = set(names), list(names)
    while wanted:
        for name in by_name[wanted.pop()].needs:
            if name in by_name and name not in chosen | have:
                chosen.add(name)
                wanted.append(name)
    return [r for r in runs if r.name in chosen]


def plan_headline(profile: Profile) -> list[RunSpec]:
    """2 %: supervised, IUC and semi-supervised per draw, plus the 100 % reference; then the recipes
    beyond the paper (label-set loss, with and without self-training) at 2 %, and at 5 % supervised,
    IUC and label-set + self-training. The long runs (over every training subject) come first within
    each part, so that two workers finish close together."""
    fraction, draws = profile.fractions[0], range(profile.draws)
    runs = [RunSpec("unet", "supervised", "bce", 1.0, 0)]
    runs += [RunSpec("unet", "supervised", "bce", fraction, d) for d in draws]
    for d in draws:
        runs += [RunSpec("unet", "partial", "iuc", fraction, d), RunSpec("unet", "semi", "bce", fraction, d)]
    runs += beyond_runs([fraction], draws)
    if len(profile.fractions) > 1:
        more = profile.fractions[1]
        for d in draws:
            runs += [RunSpec("unet", "supervised", "bce", more, d), RunSpec("unet", "partial", "iuc", more, d),
                     RunSpec("unet", "partial", "labelset", more, d, self_training=True)]
    return runs


def beyond_runs(fractions: list[float], draws) -> list[RunSpec]:
    """The recipes beyond the paper: the label-set loss alone, with self-training once it plateaus,
    and with self-training from epoch 6 (an early start, kept to show its failure: see the report)."""
    return [RunSpec("unet", "partial", "labelset", f, d, self_training=st, self_train_after=after)
            for f in fractions for d in draws for st, after in ((True, None), (False, None), (True, 5))]


def plan_atlas(profile: Profile) -> list[RunSpec]:
    """Issue 19's levers for one fully labelled subject, side by side, at each of the profile's
    fractions and draws: the 100 % reference, then per fraction and draw (so that ``--only d0`` or
    ``--only f002`` is a complete comparison) supervised, IUC, label-set + self-training (from
    scratch and from the IUC run), IUC with a share of fully labelled slices in every batch and
    augmentation, and the atlas recipes: propagation (alone, and with self-training filling in the
    children it left unknown), atlas-to-scan pairs, and both (alone, and with the share and
    augmentation), propagation with its best epoch (and early stopping) chosen by the
    validation Dice of the children instead of the loss, and propagation writing only the children
    the fused atlases agree on more firmly (confidence 0.8 and 0.9, default 0.7), or fusing each atlas
    registered twice (regular and flexible warps), propagation selecting and saving an average of
    the weights (``--weight-ema``), and both together; then propagation and pairs evaluated with
    atlas fusion at inference (the same trained run, the atlases registered to each test scan too),
    and the pairs run trained with two more seeds, the three averaged at inference without and with
    atlas fusion.
    The paper's rows and today's label-set run keep their names (and results)."""
    runs = [RunSpec("unet", "supervised", "bce", 1.0, 0)]
    for f in profile.fractions:
        for d in range(profile.draws):
            iuc = RunSpec("unet", "partial", "iuc", f, d)
            labelset = RunSpec("unet", "partial", "labelset", f, d, self_training=True)
            runs += [RunSpec("unet", "supervised", "bce", f, d), iuc, labelset,
                     dataclasses.replace(labelset, from_iuc=True),
                     dataclasses.replace(iuc, full_share=FULL_SHARE, augment="standard"),
                     dataclasses.replace(iuc, atlas="propagate"),
                     dataclasses.replace(iuc, atlas="propagate", self_training=True),
                     dataclasses.replace(iuc, atlas="propagate", select="child-dice"),
                     dataclasses.replace(iuc, atlas="propagate", atlas_confidence=0.8),
                     dataclasses.replace(iuc, atlas="propagate", atlas_confidence=0.9),
                     dataclasses.replace(iuc, atlas="propagate", atlas_warps=("regular", "flexible")),
                     dataclasses.replace(iuc, atlas="propagate", weight_ema=WEIGHT_EMA),
                     dataclasses.replace(iuc, atlas="propagate", atlas_warps=("regular", "flexible"),
                                         weight_ema=WEIGHT_EMA),
                     dataclasses.replace(iuc, atlas="pairs"), dataclasses.replace(iuc, atlas="both"),
                     dataclasses.replace(iuc, atlas="both", full_share=FULL_SHARE, augment="standard"),
                     dataclasses.replace(iuc, atlas="propagate", fusion=FUSION_WARPS),
                     dataclasses.replace(iuc, atlas="pairs", fusion=FUSION_WARPS)]
            runs += [dataclasses.replace(iuc, atlas="pairs", seed=s) for s in range(1, ENSEMBLE)]
            runs += [dataclasses.replace(iuc, atlas="pairs", members=ENSEMBLE, fusion=f) for f in ((), FUSION_WARPS)]
    return runs


def plan_full(profile: Profile) -> list[RunSpec]:
    """The run grid of the paper's Tables 1-3 and Appendix A, in the order they are started."""
    fractions, draws = profile.fractions, range(profile.draws)
    low = [f for f in fractions if f <= 0.05]
    runs = [RunSpec("unet", "supervised", "bce", 1.0, 0)]
    for f in fractions:  # Figure 4 first: supervised, IUC, semi-supervised (started once its supervised run is done)
        for d in draws:
            runs += [RunSpec("unet", kind, loss, f, d) for kind, loss in
                     (("supervised", "bce"), ("partial", "iuc"), ("semi", "bce"))]
    for f in low:  # Tables 1-2: the other losses
        for d in draws:
            runs += [RunSpec("unet", "partial", loss, f, d) for loss in ("weight", "wnorm", "huc")]
    if profile.extra_observed and fractions:
        runs += [RunSpec("unet", "partial", "iuc", fractions[0], d, "observed") for d in draws]
    if profile.extra_budget and fractions:
        runs += [RunSpec("unet", "partial", "iuc", fractions[0], d, budget=profile.extra_budget)
                 for d in range(profile.fewer_draws.get("budget", profile.draws))]
    runs += beyond_runs(low, draws)
    for f in low:  # Table 3
        for d in range(profile.fewer_draws.get("segformer", profile.draws)):
            runs += [RunSpec("segformer", kind, loss, f, d) for kind, loss in
                     (("supervised", "bce"), ("partial", "iuc"), ("semi", "bce"))]
    return runs
