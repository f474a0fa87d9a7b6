"""S1 training augmentations as batched tensor ops (one call per batch, any device).

Random resized crop + horizontal flip (one ``affine_grid``/``grid_sample`` per batch),
brightness/contrast(/saturation) jitter, random grayscale (RGB only), Gaussian blur
(per-sample sigma, separable grouped convolution) and random erasing. Every random
draw comes from the ``torch.Generator`` passed in, so a (seed, step) pair fixes the
views exactly — also after resuming a killed run.

This is the *training* augmentation; the simulator's camera model that makes query
photos is a different, fixed transformation (docs: DESIGN.md §3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Probabilities and ranges of each augmentation (set a probability to 0 to disable)."""

    crop_min_scale: float = 0.25  # area share of the crop, lower bound
    crop_max_scale: float = 1.0
    crop_max_aspect: float = 4 / 3  # aspect ratio drawn log-uniformly in [1/a, a]
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor drawn uniformly in [1-b, 1+b]
    contrast: float = 0.4
    saturation: float = 0.4  # RGB only
    grayscale_p: float = 0.2  # RGB only
    blur_p: float = 0.3
    blur_sigma_min: float = 0.1  # in pixels
    blur_sigma_max: float = 1.0
    erase_p: float = 0.25
    erase_min_area: float = 0.02
    erase_max_area: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.crop_min_scale <= self.crop_max_scale <= 1:
            raise ValueError("need 0 < crop_min_scale <= crop_max_scale <= 1")
        if self.crop_max_aspect < 1:
            raise ValueError("crop_max_aspect must be >= 1")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "erase_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.blur_sigma_min <= self.blur_sigma_max:
            raise ValueError("need 0 < blur_sigma_min <= blur_sigma_max")
        if not 0 < self.erase_min_area <= self.erase_max_area < 1:
            raise ValueError("need 0 < erase_min_area <= erase_max_area < 1")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def resized_crop_flip(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-sample random resized crop and horizontal flip, output at the input size."""
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b, cfg.crop_min_scale, cfg.crop_max_scale, g, dev)
    log_a = math.log(cfg.crop_max_aspect)
    aspect = torch.exp(_uniform(b, -log_a, log_a, g, dev))
    # crop width/height as shares of the image, clipped to fit
    cw = torch.sqrt(area * aspect).clamp(max=1.0)
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - ch)
    flip = _coin(b, cfg.flip_p, g, dev)
    sx = torch.where(flip, -cw, cw)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast (and saturation, random grayscale for RGB) on [0, 1] images."""
    b, c = x.shape[:2]
    dev = x.device
    on = _coin(b, cfg.jitter_p, g, dev).view(b, 1, 1, 1)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, g, dev).view(b, 1, 1, 1)
    contr = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, dev).view(b, 1, 1, 1)
    y = x * bright
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * contr + mean
    if c == 3:
        sat = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, g, dev).view(b, 1, 1, 1)
        gray = _luma(y)
        y = (y - gray) * sat + gray
    y = torch.where(on, y, x)
    if c == 3 and cfg.grayscale_p > 0:
        to_gray = _coin(b, cfg.grayscale_p, g, dev).view(b, 1, 1, 1)
        y = torch.where(to_gray, _luma(y).expand_as(y), y)
    return y.clamp_(0, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, applied with probability ``blur_p``."""
    b, c, h, w = x.shape
    dev = x.device
    on = _coin(b, cfg.blur_p, g, dev)
    sigma = _uniform(b, cfg.blur_sigma_min, cfg.blur_sigma_max, g, dev)
    radius = max(1, math.ceil(2 * cfg.blur_sigma_max))
    radius = min(radius, (min(h, w) - 1) // 2)
    if radius < 1 or not bool(on.any()):
        return x
    offs = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(offs[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # [B, K]
    k = k.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    y = y.view(b, c, h, w)
    return torch.where(on.view(b, 1, 1, 1), y, x)


def random_erase(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Fill one random rectangle per chosen sample with a random grey level."""
    b, c, h, w = x.shape
    dev = x.device
    on = _coin(b, cfg.erase_p, g, dev)
    area = _uniform(b, cfg.erase_min_area, cfg.erase_max_area, g, dev)
    aspect = torch.exp(_uniform(b, -math.log(3.0), math.log(3.0), g, dev))
    eh = torch.sqrt(area * aspect).clamp(max=1.0)
    ew = torch.sqrt(area / aspect).clamp(max=1.0)
    y0 = torch.rand(b, generator=g, device=dev) * (1 - eh)
    x0 = torch.rand(b, generator=g, device=dev) * (1 - ew)
    fill = torch.rand(b, generator=g, device=dev).view(b, 1, 1, 1).to(x.dtype)
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
    in_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + eh)[:, None])  # [B, H]
    in_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + ew)[:, None])  # [B, W]
    mask = (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None]).unsqueeze(1)
    return torch.where(mask, fill, x)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random view of each image: uint8 ``[B, C, H, W]`` (or float in [0, 1]) → float [0, 1]."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    x = resized_crop_flip(x, cfg, g)
    if cfg.jitter_p > 0 or (x.shape[1] == 3 and cfg.grayscale_p > 0):
        x = color_jitter(x, cfg, g)
    if cfg.blur_p > 0:
        x = gaussian_blur(x, cfg, g)
    if cfg.erase_p > 0:
        x = random_erase(x, cfg, g)
    return x.clamp_(0, 1)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu", stream: int = 0):
    """A generator keyed by (seed, step, stream): the same views after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1))
    return g
