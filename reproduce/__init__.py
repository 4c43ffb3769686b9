"""The paper's experiments from one command (Tables 1-3, Figure 4, Appendix A)::

    neoseg-reproduce --out runs/experiments               # the headline cells
    neoseg-reproduce --out runs/experiments --grid full   # Tables 1-3, Appendix A
    neoseg-reproduce --out runs/atlas --grid atlas --anatomy v2 --fractions 0.02  # issue 19's levers
    python -m neoseg.reproduce --out runs/experiments     # the same

The default profile ``equal-epochs`` (formerly ``cpu``) is the paper's protocol at 2 mm, for CPUs: every model trains for the same maximum
number of epochs over *its own* training set (the supervised model: the fully labelled subjects;
IUC and the other partial-label losses: every training subject; the semi-supervised fine-tuning:
every subject, with pseudo labels), with early stopping on the validation loss, keeping the
best-validation weights. ``equal-steps`` is the earlier CPU protocol (the same number of optimizer
steps for every run, 4 mm), kept as an ablation; ``paper`` is the paper's full scale, for GPUs, the same as ``neoseg-train --profile paper``.

Runs (paper section 5.1): fully labelled fractions of the training subjects, random draws of them
per fraction, plus one 100 % reference; model kinds

* supervised: BCE on the fully labelled subjects only,
* semi-supervised: the supervised model of the same fraction and draw pseudo-labels the partially
  labelled scans (corrected with the known parent), then is fine-tuned on all of them,
* ours: IUC; in the full grid also HUC, WEIGHT, WNORM (2/5 %) and IUC with the ``observed`` reduction,
* SegFormer-B0 (full grid): supervised, semi-supervised and IUC (2/5 %).

The headline grid is 2 %: supervised, semi-supervised and IUC over the profile's draws, plus the
100 % reference. The atlas grid (:func:`.grid.plan_atlas`) sets the levers for one fully labelled
subject beside the paper's rows: atlas propagation and pairs, a share of fully labelled slices per
batch, augmentation, label-set + self-training from the IUC model. Every run lives in ``OUT/runs/<name>/`` (a ``neoseg-train`` run folder) and is
finished when its ``done.json`` exists; an interrupted command continues where it stopped (finished
runs are kept, an interrupted one resumes from its last epoch, with the same result as an
uninterrupted run). At the end ``OUT/results.csv`` (tidy: one row per run, test session and
structure) is rebuilt from the finished runs and ``OUT/REPORT.md`` with its figure is written by
:mod:`neoseg.reproduce.report`.

The modules, in the order a run of the command uses them: :mod:`.profiles` (scale and protocol),
:mod:`.grid` (the runs), :mod:`.metadata` (``experiment.json``), :mod:`.prepare` (the cohort and the
slice caches), :mod:`.calibrate` (the time estimate), :mod:`.schedule` (runs in parallel) of
:mod:`.training` (one run), :mod:`.results` (``results.csv``), then :mod:`.report` with
:mod:`.records` (each run folder's ending and time), :mod:`.stats`, :mod:`.tables`, :mod:`.draws`
(per-draw tables, the worst draw, the target) and :mod:`.figure`; :mod:`.experiment` wires them and :mod:`.cli` is
the command line.
"""
