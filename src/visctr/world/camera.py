"""The fixed camera model that turns a catalog photo into a user's query photo.

Affine + perspective warp, lighting, blur, sensor noise and occlusion, applied as
batched tensor ops. It is deliberately *not* the S1 training augmentation: the
encoder never sees these exact distortions during self-supervision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class CameraConfig:
    """Strength of each distortion (ranges are uniform)."""

    rotation_deg: float = 12.0
    scale_min: float = 0.85
    scale_max: float = 1.08
    translate: float = 0.08  # share of the image
    perspective: float = 0.08
    gain_min: float = 0.7
    gain_max: float = 1.25
    gamma_min: float = 0.8
    gamma_max: float = 1.25
    illumination_gradient: float = 0.25
    blur_sigma_max: float = 0.9
    noise_std: float = 0.04
    occlusion_prob: float = 0.3
    occlusion_max_share: float = 0.2


def _gaussian_kernels(sigmas: torch.Tensor, radius: int = 2) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigmas.clamp_min(1e-3)[:, None]
    k = torch.exp(-(x[None] ** 2) / (2 * s**2))
    return k / k.sum(1, keepdim=True)  # [B, 2r+1]


def photograph(images: np.ndarray, cfg: CameraConfig, generator: torch.Generator) -> np.ndarray:
    """Apply the camera model to uint8 ``[B, C, H, W]`` images; returns uint8 of the same shape."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    b, c, h, w = x.shape
    g = generator

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=g)

    # Geometry: a homography per sample, in normalised coordinates.
    ang = u(-cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180
    scale = u(cfg.scale_min, cfg.scale_max)
    tx, ty = u(-cfg.translate, cfg.translate) * 2, u(-cfg.translate, cfg.translate) * 2
    px, py = u(-cfg.perspective, cfg.perspective), u(-cfg.perspective, cfg.perspective)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    hmat = torch.zeros(b, 3, 3)
    hmat[:, 0, 0], hmat[:, 0, 1], hmat[:, 0, 2] = cos, -sin, tx
    hmat[:, 1, 0], hmat[:, 1, 1], hmat[:, 1, 2] = sin, cos, ty
    hmat[:, 2, 0], hmat[:, 2, 1], hmat[:, 2, 2] = px, py, 1.0
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)  # [1, HW, 3]
    src = pts @ hmat.transpose(1, 2)  # [B, HW, 3]
    grid = (src[..., :2] / src[..., 2:].clamp_min(1e-3)).view(b, h, w, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    # Lighting: gain, gamma, a linear illumination gradient.
    gain = u(cfg.gain_min, cfg.gain_max).view(b, 1, 1, 1)
    gamma = u(cfg.gamma_min, cfg.gamma_max).view(b, 1, 1, 1)
    theta = u(0, 2 * math.pi)
    grad = (torch.cos(theta).view(b, 1, 1) * xs + torch.sin(theta).view(b, 1, 1) * ys).unsqueeze(1)
    illum = 1 + cfg.illumination_gradient * u(0, 1).view(b, 1, 1, 1) * grad
    x = (x.clamp(0, 1) ** gamma) * gain * illum

    # Blur: a separable Gaussian with a per-sample sigma (grouped convolution).
    if cfg.blur_sigma_max > 0:
        k = _gaussian_kernels(u(0.05, cfg.blur_sigma_max))  # [B, K]
        kk = k.repeat_interleave(c, 0)  # [B*C, K]
        r = k.shape[1] // 2
        flat = x.reshape(1, b * c, h, w)
        flat = F.conv2d(
            F.pad(flat, (r, r, 0, 0), mode="replicate"), kk.view(b * c, 1, 1, -1), groups=b * c
        )
        flat = F.conv2d(
            F.pad(flat, (0, 0, r, r), mode="replicate"), kk.view(b * c, 1, -1, 1), groups=b * c
        )
        x = flat.view(b, c, h, w)

    # Sensor noise.
    x = x + cfg.noise_std * torch.randn(x.shape, generator=g)

    # Occlusion: a flat rectangle (a finger, a price tag) on some photos.
    occ = torch.rand(b, generator=g) < cfg.occlusion_prob
    share = u(0.05, cfg.occlusion_max_share)
    ow = (share.sqrt() * w).long().clamp_min(1)
    oh = (share.sqrt() * h).long().clamp_min(1)
    ox = (torch.rand(b, generator=g) * (w - ow + 1)).long()
    oy = (torch.rand(b, generator=g) * (h - oh + 1)).long()
    shade = torch.rand(b, generator=g)
    xi = torch.arange(w).view(1, 1, w)
    yi = torch.arange(h).view(1, h, 1)
    mask = (
        (xi >= ox.view(b, 1, 1))
        & (xi < (ox + ow).view(b, 1, 1))
        & (yi >= oy.view(b, 1, 1))
        & (yi < (oy + oh).view(b, 1, 1))
        & occ.view(b, 1, 1)
    )
    x = torch.where(mask.unsqueeze(1), shade.view(b, 1, 1, 1), x)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
