"""On-the-fly augmentation of training batches: whole batches of 2D slices, on the training device.

The ``standard`` policy (the cpu profile's default, ``contrast``, is it plus the curve below;
``--augment none`` turns augmentation off; the paper's profile and experiments run without it)
draws, per slice and independently:

- spatial (p 0.5): rotation (±15°), scaling (0.85-1.15), shift (±8 % of the slice) and a smooth
  elastic deformation, as one sampling grid; the image is resampled bilinearly, the {0,1,2}
  targets by nearest neighbour, so labels move with the image and unknown entries stay unknown;
- smooth multiplicative bias field (p 0.3, its log of std up to 0.3);
- gamma (p 0.3), a random smooth monotone intensity curve that changes the contrast between
  tissues (p 0.3) and a brightness gain (p 0.3);
- with the ``contrast`` policy, a random *non-monotone* intensity curve (p 0.1): knots at evenly
  spaced inputs take independent uniform values (0 stays 0, so air stays dark), which reorders the
  tissues' intensities as other sequences do (a T1's grey/white inversion, other echo times) while
  the real image's texture and partial-volume edges stay;
- blur (p 0.2) and simulated low resolution / anisotropy (p 0.2): down- and up-sampling along one
  in-plane axis by 1.5-4x, after the blur of the thicker slice;
- Rician noise (p 0.3);
- brain extraction (p 0.3): everything outside the brain is set to 0, the brain being every voxel
  whose label is not the hierarchy's value 0 ("unlabelled": outside the brain mask; drawem9's
  "background", inside the mask, counts as brain, as in dHCP's brain masks), with 0-2 pixels of
  non-brain kept around it as loose masks do; needs a hierarchy that names value 0;
- field-of-view cut (p 0.15): a band of 10-35 % of the slice at one edge is cut away, image 0 and
  labels as outside, as a scan with a smaller field of view is padded.

Every random number of a batch comes from one ``torch.Generator`` (seeded from the run's seed and
stored in ``last.pt``), drawn for the global batch in a fixed order, so runs are deterministic,
resume exactly, and torchrun ranks augment their shares as one process would.

Why batched torch ops and not TorchIO or MONAI: those transform one 3D subject at a time on the
CPU, in the data loader. neoseg trains on 2D slices already on the device, and the whole batch is
transformed here with a few calls (``affine_grid``/``grid_sample``, grouped convolutions) at a
small fraction of a training step: on the shared 2-core machine, a batch of 16 slices of 64^2
under the standard policy cost 0.10-0.13x a training step of the cpu profile's U-Net, timed
interleaved in one process (``python -m neoseg.benchmarks.augment_cost``). Per-slice Python
transforms in loader workers would take the cores the network needs; the policy above needs no
extra dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neoseg.core.hierarchy import Hierarchy

from .config import AUGMENT_POLICIES

N_KNOTS = 6  # segments of the random intensity curve


@dataclass(frozen=True)
class Policy:
    """Per-slice probabilities and parameter ranges (pixels and fractions of the slice size)."""

    spatial: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08  # of the slice size, each direction
    elastic: float = 0.02  # std of the control points' displacement, in half slice sizes (-1..1 coordinates)
    elastic_points: int = 5  # control points per side
    bias: float = 0.3
    bias_strength: float = 0.3  # std of the log field at most
    gamma: float = 0.3
    gamma_log_std: float = 0.3
    curve: float = 0.3
    curve_slope: float = 2.0  # slopes of the curve's segments lie in [1/x, x] before normalising
    remap: float = 0.0  # the non-monotone curve (the ``contrast`` policy's)
    remap_segments: int = 6
    brightness: float = 0.3
    gain: tuple[float, float] = (0.75, 1.25)
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.2)  # pixels
    lowres: float = 0.2
    lowres_factor: tuple[float, float] = (1.5, 4.0)
    noise: float = 0.3
    noise_sigma: tuple[float, float] = (0.01, 0.06)  # of the [0, 1] intensity range
    brain: float = 0.3
    brain_margin: int = 2  # pixels of non-brain kept around the brain at most
    fov: float = 0.15
    fov_cut: tuple[float, float] = (0.1, 0.35)  # of the slice size


POLICIES = {"standard": Policy(), "none": None, "contrast": Policy(remap=0.1)}
assert tuple(POLICIES) == AUGMENT_POLICIES


# ---- the transforms, each on a batch (N, 1, H, W) image and (N, C, H, W) uint8 targets ------
def warp(image: torch.Tensor, target: torch.Tensor, grid: torch.Tensor, fill: torch.Tensor):
    """Resample both at ``grid`` (N, H, W, 2; ``grid_sample`` coordinates, align_corners False):
    the image bilinearly (0 outside), the targets by nearest neighbour (``fill`` (C,) outside)."""
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    n, c, h, w = target.shape
    x = torch.round(((grid[..., 0] + 1) * w - 1) / 2).long()  # nearest source pixel
    y = torch.round(((grid[..., 1] + 1) * h - 1) / 2).long()
    inside = ((x >= 0) & (x < w) & (y >= 0) & (y < h)).view(n, 1, -1)
    index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).view(n, 1, -1).expand(n, c, -1)
    moved = torch.where(inside, target.reshape(n, c, -1).gather(2, index), fill.to(target.dtype).view(1, c, 1))
    return image, moved.view(n, c, h, w)


def affine_grid(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid of a rotation by ``angle`` (radians) and scaling by ``scale`` about the slice
    centre, then a shift by ``shift`` (N, 2: x, y in half slice sizes), for (H, W) slices."""
    h, w = size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin * h / w, -shift[:, 0]], 1),
                         torch.stack([sin * w / h, cos, -shift[:, 1]], 1)], 1)
    return F.affine_grid(theta, [len(angle), 1, h, w], align_corners=False)


def elastic_offsets(control: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Smooth displacement (N, H, W, 2) interpolated bicubically from control points (N, 2, P, P)."""
    return F.interpolate(control, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def brain_extract(image: torch.Tensor, target: torch.Tensor, outside: int, margin: torch.Tensor) -> torch.Tensor:
    """The image with every pixel outside the brain set to 0; the brain is where the ``outside``
    channel's target is not 1, grown by ``margin`` (N,) pixels."""
    brain = (target[:, outside:outside + 1] != 1).to(image.dtype)
    keep = brain.clone()
    for r in range(1, int(margin.max()) + 1 if len(margin) else 1):
        grown = F.max_pool2d(brain, 2 * r + 1, stride=1, padding=r)
        keep = torch.where((margin == r).view(-1, 1, 1, 1), grown, keep)
    return image * keep


def fov_cut(image: torch.Tensor, target: torch.Tensor, side: torch.Tensor, depth: torch.Tensor, fill: torch.Tensor):
    """Cut a band of ``depth`` (N,) pixels at edge ``side`` (N,: 0 top, 1 bottom, 2 left, 3 right)
    away: image 0, targets ``fill``."""
    n, _, h, w = image.shape
    rows = torch.arange(h, device=image.device).view(1, h, 1)
    cols = torch.arange(w, device=image.device).view(1, 1, w)
    s, d = side.view(-1, 1, 1), depth.view(-1, 1, 1)
    cut = ((s == 0) & (rows < d)) | ((s == 1) & (rows >= h - d)) | ((s == 2) & (cols < d)) | ((s == 3) & (cols >= w - d))
    cut = cut.unsqueeze(1)
    return image.masked_fill(cut, 0), torch.where(cut, fill.view(1, -1, 1, 1).to(target.dtype), target)


def bias_field(image: torch.Tensor, log_control: torch.Tensor) -> torch.Tensor:
    """Multiply by exp of a smooth field interpolated from ``log_control`` (N, 1, p, p)."""
    field = F.interpolate(log_control, size=image.shape[-2:], mode="bicubic", align_corners=True)
    return image * torch.exp(field)


def intensity_curve(image: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear curve through ``knots`` (N, K + 1) at evenly spaced inputs over [0, 1]
    (monotone where the knots increase); inputs above 1 follow the last segment."""
    n, k = len(image), knots.shape[1] - 1
    x = image.reshape(n, -1).clamp_min(0) * k
    i = x.floor().clamp(max=k - 1).long()
    lo, hi = knots.gather(1, i), knots.gather(1, i + 1)
    return (lo + (x - i) * (hi - lo)).reshape(image.shape)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2 radius + 1) normalised Gaussians; sigma 0 gives the identity."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma.clamp_min(1e-3).view(-1, 1)) ** 2)
    return k / k.sum(1, keepdim=True)


def blur_along(image: torch.Tensor, sigma: torch.Tensor, axis: int) -> torch.Tensor:
    """Gaussian blur of each slice by its own ``sigma`` (N,) pixels along ``axis`` (-1 x, -2 y);
    edges replicated."""
    n, _, h, w = image.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    kernels = gaussian_kernels(sigma, radius).to(image.dtype)
    x = image.transpose(-1, -2) if axis == -2 else image
    x = F.pad(x.reshape(1, n, x.shape[-2], x.shape[-1]), (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernels.view(n, 1, 1, -1), groups=n).reshape(n, 1, *x.shape[-2:-1], -1)
    return x.transpose(-1, -2) if axis == -2 else x


def blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return blur_along(blur_along(image, sigma, -1), sigma, -2)


def low_resolution(image: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
    """Acquire each slice with ``factor`` (N,) times coarser pixels along ``axis`` (-1 x, -2 y) and
    interpolate it back linearly: blur by the coarse pixel (FWHM ``factor``), sample every
    ``factor`` pixels, linear interpolation in between."""
    x = blur_along(image, factor / 2.3548, axis)
    if axis == -2:
        x = x.transpose(-1, -2)
    n, _, h, w = x.shape
    f = factor.view(-1, 1)
    n_low = torch.ceil(w / f)
    u = ((torch.arange(w, device=x.device) + 0.5) / f - 0.5).clamp(min=0)
    u = torch.minimum(u, n_low - 1)
    j0 = u.floor()
    j1 = torch.minimum(j0 + 1, n_low - 1)
    weight = (u - j0).view(n, 1, 1, w)
    rows = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device).view(1, h, 1).expand(n, h, w)

    def sample(j: torch.Tensor) -> torch.Tensor:
        pos = ((j + 0.5) * f - 0.5).clamp(0, w - 1)  # where low-resolution sample j lies
        cols = ((2 * pos + 1) / w - 1).view(n, 1, w).expand(n, h, w)
        return F.grid_sample(x, torch.stack([cols, rows], -1), mode="bilinear", padding_mode="border",
                             align_corners=False)

    x = sample(j0) * (1 - weight) + sample(j1) * weight
    return x.transpose(-1, -2) if axis == -2 else x


def rician_noise(image: torch.Tensor, sigma: torch.Tensor, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """Magnitude of the image plus complex Gaussian noise of std ``sigma`` (N,) (standard normal
    fields ``real`` and ``imag``, shaped as the image)."""
    s = sigma.view(-1, 1, 1, 1)
    return torch.sqrt((image + s * real) ** 2 + (s * imag) ** 2)


# ---- the policy ---------------------------------------------------------------------------
class SeededDraws:
    """A random generator of its own on the training device, whose state a checkpoint keeps."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device)

    def _normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device)


class Augmenter(SeededDraws):
    """Applies a :class:`Policy` to training batches with its own generator (on ``device``)."""

    def __init__(self, policy: Policy, hierarchy: Hierarchy, seed: int, device: torch.device | str = "cpu"):
        super().__init__(seed, device)
        self.policy = policy
        self.outside = hierarchy.outside_channel
        table = hierarchy.target_table()
        row = table[0] if self.outside is not None else [0] * len(hierarchy)  # what padding gives
        self.fill = torch.as_tensor(row, dtype=torch.float32, device=device)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())  # a checkpoint loaded onto a GPU holds it there

    def draw(self, total: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Every random number of a global batch of ``total`` slices, in a fixed order."""
        p, u = self.policy, self._uniform
        between = lambda lo_hi, r: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * r  # noqa: E731
        picks = u(total, 10)
        slopes = torch.exp(math.log(p.curve_slope) * (2 * u(total, N_KNOTS) - 1))
        knots = torch.cat([torch.zeros(total, 1, device=slopes.device), slopes.cumsum(1)], 1)
        draws = {
            "spatial": picks[:, 0] < p.spatial,
            "angle": math.radians(p.rotate_deg) * (2 * u(total) - 1),
            "scale": torch.exp(between([math.log(s) for s in p.scale], u(total))),
            "shift": 2 * p.shift * (2 * u(total, 2) - 1),
            "elastic": p.elastic * u(total).view(-1, 1, 1, 1) * self._normal(total, 2, p.elastic_points, p.elastic_points),
            "bias": picks[:, 1] < p.bias,
            "bias_field": p.bias_strength * u(total).view(-1, 1, 1, 1) * self._normal(total, 1, 4, 4),
            "gamma": picks[:, 2] < p.gamma,
            "gamma_value": torch.exp(p.gamma_log_std * self._normal(total)),
            "curve": picks[:, 3] < p.curve,
            "knots": knots / knots[:, -1:],
            "brightness": picks[:, 4] < p.brightness,
            "gain": between(p.gain, u(total)),
            "blur": picks[:, 5] < p.blur,
            "blur_sigma": between(p.blur_sigma, u(total)),
            "lowres": picks[:, 6] < p.lowres,
            "lowres_y": u(total) < 0.5,  # along y (-2), else along x (-1)
            "lowres_factor": between(p.lowres_factor, u(total)),
            "noise": picks[:, 7] < p.noise,
            "noise_sigma": between(p.noise_sigma, u(total)),
            "real": self._normal(total, 1, *size),
            "imag": self._normal(total, 1, *size),
            "brain": (picks[:, 8] < p.brain) & (self.outside is not None),
            "brain_margin": (u(total) * (p.brain_margin + 1)).floor().clamp(max=p.brain_margin),
            "fov": picks[:, 9] < p.fov,
            "fov_side": (u(total) * 4).floor().clamp(max=3),
            "fov_depth": between(p.fov_cut, u(total)),
        }
        if p.remap > 0:  # drawn only then, so the standard policy's stream is what it always was
            draws["remap"] = u(total) < p.remap
            draws["remap_knots"] = torch.cat([torch.zeros(total, 1, device=slopes.device), u(total, p.remap_segments)], 1)
        return draws

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, target: torch.Tensor, start: int = 0, total: int | None = None):
        """Augmented copies of ``image`` (N, 1, H, W) float and ``target`` (N, C, H, W) uint8: rows
        ``start`` .. ``start + N`` of a global batch of ``total`` (default N) slices."""
        n, _, h, w = image.shape
        total = n if total is None else total
        d = {k: v[start:start + n] for k, v in self.draw(total, (h, w)).items()}
        image, target = image.float().clone(), target.clone()

        def each(chosen: torch.Tensor, fn) -> None:
            rows = chosen.nonzero().flatten()
            if len(rows):
                image[rows] = fn(rows).to(image.dtype)

        rows = d["spatial"].nonzero().flatten()
        if len(rows):
            grid = affine_grid(d["angle"][rows], d["scale"][rows], d["shift"][rows], (h, w))
            grid = grid + elastic_offsets(d["elastic"][rows], (h, w))
            image[rows], target[rows] = warp(image[rows], target[rows], grid, self.fill)
        each(d["bias"], lambda r: bias_field(image[r], d["bias_field"][r]))
        image.clamp_(min=0)
        each(d["gamma"], lambda r: image[r] ** d["gamma_value"][r].view(-1, 1, 1, 1))
        each(d["curve"], lambda r: intensity_curve(image[r], d["knots"][r]))
        if "remap" in d:
            each(d["remap"], lambda r: intensity_curve(image[r].clamp(max=1), d["remap_knots"][r]))
        each(d["brightness"], lambda r: image[r] * d["gain"][r].view(-1, 1, 1, 1))
        each(d["blur"], lambda r: blur(image[r], d["blur_sigma"][r]))
        for axis, chosen in ((-2, d["lowres_y"]), (-1, ~d["lowres_y"])):
            each(d["lowres"] & chosen, lambda r: low_resolution(image[r], d["lowres_factor"][r], axis))
        each(d["noise"], lambda r: rician_noise(image[r], d["noise_sigma"][r], d["real"][r], d["imag"][r]))
        each(d["brain"], lambda r: brain_extract(image[r], target[r], self.outside, d["brain_margin"][r].long()))
        rows = d["fov"].nonzero().flatten()
        if len(rows):
            side = d["fov_side"][rows].long()
            depth = (d["fov_depth"][rows] * torch.tensor([h, h, w, w], device=rows.device)[side]).long()
            image[rows], target[rows] = fov_cut(image[rows], target[rows], side, depth, self.fill)
        return image, target


def make_augment(name: str, hierarchy: Hierarchy, seed: int, device: torch.device | str = "cpu") -> Augmenter | None:
    """The augmenter of policy ``name`` (None for ``none``)."""
    if name not in POLICIES:
        raise ValueError(f"unknown augmentation policy '{name}'; available: {', '.join(POLICIES)}")
    policy = POLICIES[name]
    return None if policy is None else Augmenter(policy, hierarchy, seed, device)
