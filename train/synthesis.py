"""Training from label maps (SynthSeg-style, Billot et al. 2023): with a stated probability per
slice, the training image is replaced by one synthesised from its label map, so the network learns
shapes rather than one scanner's contrast and resolution. ``neoseg-train --synthesis P``.

Each synthesised slice, drawn on the training device for the whole global batch at once:

1. **regions** from the {0,1,2} targets: each pixel's region is the deepest channel that is 1
   there: its leaf where the label is known, the parent where the children are unknown (a
   partially labelled session's TCV) and the outside channel (value 0: skull, scalp, air). The
   content of the outside and of an unknown parent is not one tissue, so where the slice has a
   real image those regions are split further into :data:`BINS` by the real image's intensity
   (SynthSeg likewise clusters the intensities of its extra-cerebral regions): their inner
   structure survives, with random contrast, and the loss still knows nothing of the children
   there. Label maps without an image (``--synth-labels``) keep them as one region each;
2. per region a Gaussian of random mean (uniform in [0, 1]) and spread (up to ``std`` of the range);
3. partial-volume blur (Gaussian, ``pv_sigma`` pixels);
4. resolution: with ``lowres`` probability, acquired at coarser pixels and interpolated back,
   either isotropically in the plane (factor ``iso_factor``) or along one in-plane axis only
   (``thick_factor``: a thick slice direction, as 0.8 x 0.8 x 4 mm scans seen in a sagittal slice);
5. a smooth multiplicative bias field (log std up to ``bias_strength``);
6. motion-like ghosting (``motion`` probability): the k-space lines acquired after a random
   moment (a random fraction of the phase-encoding direction's outer lines) are shifted by a
   random translation, as a patient moving during the scan; the magnitude is kept;
7. Gaussian noise (std up to ``noise``), then scaled to the [0, 1] range of the real images
   (divided by the slice's maximum times a random factor, since real slices rarely hold their
   volume's maximum) and a random gamma.

The run's augmentation (geometry, brain extraction, field of view, intensity) runs afterwards on
every slice, synthesised or not. Random numbers come from the synthesis's own ``torch.Generator``
(seeded from the run's seed, saved in ``last.pt`` with the augmenter's), drawn for the global
batch in a fixed order, so runs are deterministic and resume exactly, as the augmenter's.

Why our own batched code and not TorchIO's ``RandomLabelsToImage`` (with ``RandomBlur``,
``RandomBiasField``, ``RandomAnisotropy``, ``RandomMotion``): TorchIO synthesises one 3D subject at
a time on the CPU in data-loader workers, from a label map of leaves. neoseg trains on 2D slices
already on the device, its targets are {0,1,2} per channel with unknown children (no leaf label
map to give TorchIO), and on 2 shared cores loader workers would take the cores the network needs.
The steps above are a few grouped convolutions, ``grid_sample`` calls and one FFT per batch. Per 64^3
volume both cost about the same on our loaded 2-core CPU (``python -m neoseg.benchmarks.synthesis_cost``),
but a training step needs 16 slices (a quarter of a volume here), not 16 volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neoseg.core.hierarchy import Hierarchy

from .augment import SeededDraws, bias_field, blur, low_resolution

BINS = (0.2, 0.4, 0.6)  # edges on the real image's [0, 1] intensity splitting unknown-content regions
SYNTH_SEED_OFFSET = 104_729  # the synthesis generator's seed is the run's seed plus this


@dataclass(frozen=True)
class SynthesisPolicy:
    """Probabilities and ranges of the synthesis (pixels and fractions of the [0, 1] range)."""

    std: float = 0.1  # spread of a region's intensities at most
    pv_sigma: tuple[float, float] = (0.3, 1.0)  # partial-volume blur, pixels
    lowres: float = 0.6
    anisotropic: float = 0.5  # of the low-resolution slices: along one axis only
    iso_factor: tuple[float, float] = (1.2, 2.5)  # both in-plane axes
    thick_factor: tuple[float, float] = (1.5, 4.0)  # one in-plane axis
    bias_strength: float = 0.5
    motion: float = 0.2
    motion_shift: float = 4.0  # pixels, each direction
    motion_lines: tuple[float, float] = (0.05, 0.3)  # fraction of the k-space lines acquired after the move
    noise: tuple[float, float] = (0.0, 0.05)
    peak: tuple[float, float] = (0.6, 1.0)  # the slice's maximum after scaling
    gamma_log_std: float = 0.25


def regions(target: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """(N, H, W) long: the deepest channel whose target is 1 at each pixel (``depth`` (C,): each
    channel's number of ancestors)."""
    known = (target == 1).to(torch.int64) * (depth.view(1, -1, 1, 1) + 1)
    return known.argmax(1)


def split_by_intensity(region: torch.Tensor, image: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """Region ids (N, H, W) made ``region * (len(BINS) + 1) + bin``, the bin of the real image's
    intensity where ``split[region]`` (C,) bool and the image is known (finite), else bin 0."""
    edges = torch.tensor(BINS, device=image.device, dtype=image.dtype)
    x = image[:, 0]
    bins = torch.bucketize(torch.nan_to_num(x, nan=0.0).contiguous(), edges)
    bins = torch.where(split[region] & torch.isfinite(x), bins, torch.zeros_like(bins))
    return region * (len(BINS) + 1) + bins


def motion_ghosts(image: torch.Tensor, shift: torch.Tensor, start: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Magnitude image after the k-space lines of (signed) frequency above ``start`` (N,: in [-0.5,
    0.5]) along the phase-encoding axis (y where ``along_y``, else x) were acquired with the object
    translated by ``shift`` (N, 2: x, y pixels)."""
    n, _, h, w = image.shape
    k = torch.fft.fft2(image.float())
    fy = torch.fft.fftfreq(h, device=image.device).view(1, 1, h, 1)
    fx = torch.fft.fftfreq(w, device=image.device).view(1, 1, 1, w)
    phase_axis = torch.where(along_y.view(-1, 1, 1, 1), fy.expand(n, 1, h, w), fx.expand(n, 1, h, w))
    moved = phase_axis >= start.view(-1, 1, 1, 1)
    ramp = fx * shift[:, 0].view(-1, 1, 1, 1) + fy * shift[:, 1].view(-1, 1, 1, 1)
    k = torch.where(moved, k * torch.exp(-2j * math.pi * ramp), k)
    return torch.fft.ifft2(k).abs().to(image.dtype)


class Synthesis(SeededDraws):
    """Replaces, with probability ``probability`` per slice (always for slices without an image,
    whose image is NaN), the batch's images by images synthesised from their targets; then hands
    the batch to ``then`` (the augmenter, or None)."""

    def __init__(self, probability: float, hierarchy: Hierarchy, seed: int, device: torch.device | str = "cpu",
                 then=None, policy: SynthesisPolicy = SynthesisPolicy()):
        self.probability, self.policy, self.then = probability, policy, then
        self.depth = torch.tensor([len(hierarchy.ancestors(i)) for i in range(len(hierarchy))], device=device)
        outside = hierarchy.outside_channel
        self.split = torch.tensor([bool(c.children) or i == outside for i, c in enumerate(hierarchy.channels)],
                                  device=device)
        self.n_regions = len(hierarchy) * (len(BINS) + 1)
        super().__init__(seed, device)

    def get_state(self) -> dict:
        return {"synthesis": self.generator.get_state(),
                "augment": self.then.get_state() if self.then is not None else None}

    def set_state(self, state: dict) -> None:
        self.generator.set_state(state["synthesis"].cpu())
        if self.then is not None and state.get("augment") is not None:
            self.then.set_state(state["augment"])

    def draw(self, total: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Every random number of a global batch of ``total`` slices, in a fixed order."""
        p, u = self.policy, self._uniform
        between = lambda lo_hi, r: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * r  # noqa: E731
        picks = u(total, 4)
        return {
            "synth": picks[:, 0] < self.probability,
            "mean": u(total, self.n_regions),
            "std": p.std * u(total, self.n_regions),
            "texture": self._normal(total, 1, *size),
            "pv_sigma": between(p.pv_sigma, u(total)),
            "lowres": picks[:, 1] < p.lowres,
            "anisotropic": u(total) < p.anisotropic,
            "thick_y": u(total) < 0.5,
            "iso_factor": between(p.iso_factor, u(total)),
            "thick_factor": between(p.thick_factor, u(total)),
            "bias_field": p.bias_strength * u(total).view(-1, 1, 1, 1) * self._normal(total, 1, 4, 4),
            "motion": picks[:, 2] < p.motion,
            "motion_shift": p.motion_shift * (2 * u(total, 2) - 1),
            "motion_start": 0.5 - between(p.motion_lines, u(total)),
            "motion_y": u(total) < 0.5,
            "noise": between(p.noise, u(total)),
            "noise_field": self._normal(total, 1, *size),
            "peak": between(p.peak, u(total)),
            "gamma": torch.exp(p.gamma_log_std * self._normal(total)),
        }

    def synthesise(self, image: torch.Tensor, target: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images (N, 1, H, W) synthesised from ``target`` (N, C, H, W) with the draws ``d`` (rows of N)."""
        region = split_by_intensity(regions(target, self.depth), image, self.split)
        mean, std = d["mean"].gather(1, region.flatten(1)), d["std"].gather(1, region.flatten(1))
        x = (mean + std * d["texture"].flatten(1)).view(image.shape)
        x = blur(x, d["pv_sigma"])
        iso = d["lowres"] & ~d["anisotropic"]
        for axis, thick in ((-2, d["thick_y"]), (-1, ~d["thick_y"])):
            rows = (iso | (d["lowres"] & d["anisotropic"] & thick)).nonzero().flatten()
            if len(rows):
                factor = torch.where(iso[rows], d["iso_factor"][rows], d["thick_factor"][rows])
                x[rows] = low_resolution(x[rows], factor, axis)
        x = bias_field(x.clamp_min(0), d["bias_field"])
        rows = d["motion"].nonzero().flatten()
        if len(rows):
            x[rows] = motion_ghosts(x[rows], d["motion_shift"][rows], d["motion_start"][rows], d["motion_y"][rows])
        x = (x + d["noise"].view(-1, 1, 1, 1) * d["noise_field"]).clamp_min(0)
        x = x / x.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1) * d["peak"].view(-1, 1, 1, 1)
        return x ** d["gamma"].view(-1, 1, 1, 1)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, target: torch.Tensor, start: int = 0, total: int | None = None):
        """Rows ``start`` .. ``start + N`` of a global batch of ``total`` (default N) slices:
        ``image`` (N, 1, H, W) float, ``target`` (N, C, H, W) uint8; returns both, transformed."""
        n, _, h, w = image.shape
        total = n if total is None else total
        d = {k: v[start:start + n] for k, v in self.draw(total, (h, w)).items()}
        image = image.float().clone()
        chosen = d["synth"] | ~torch.isfinite(image).flatten(1).all(1)
        rows = chosen.nonzero().flatten()
        if len(rows):
            image[rows] = self.synthesise(image[rows], target[rows], {k: v[rows] for k, v in d.items()})
        if self.then is not None:
            return self.then(image, target, start, total)
        return image, target


def with_synthesis(augment, probability: float, hierarchy: Hierarchy, seed: int, device: torch.device | str = "cpu"):
    """``augment`` (an :class:`~neoseg.train.augment.Augmenter` or None) preceded by the synthesis
    when ``probability`` > 0, else ``augment`` itself."""
    if probability <= 0:
        return augment
    return Synthesis(probability, hierarchy, seed + SYNTH_SEED_OFFSET, device, then=augment)
