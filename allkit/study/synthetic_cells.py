"""The synthetic cells' image model: one seeded stained cell on black, per subject and per cell.

Image model (450x450 RGB, pure black background, one stained cell near the centre), built in optical
density space with a two-stain (haematoxylin + eosin) Beer-Lambert model:

* HEM (normal B cell, label 0): smaller cell, nucleus relatively smaller, smooth round outline, dense dark
  chromatin with coarse clumps.
* ALL (lymphoblast, label 1): larger cell, high nucleus:cytoplasm ratio, irregular outline often with an
  indentation (cleft), finer and lighter but more textured chromatin, often visible nucleoli.
* All those distributions overlap (no single feature separates the classes perfectly), and the
  nucleus-area / chromatin-density trade-off keeps the mean cell colour almost class-independent.
* Per subject: a stain shift (stain vectors, stain amounts, illumination) and a small morphology
  offset shared by all of that subject's cells, so a model can overfit subjects; per cell: size,
  shape, position jitter, rotation, texture and pixel noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from allkit.constants import LABEL_ALL, LABEL_HEM

# Reference stain optical-density vectors (RGB), Ruifrok & Johnston style.
_H_OD = np.array([0.65, 0.70, 0.29])
_E_OD = np.array([0.07, 0.99, 0.11])


# --------------------------------------------------------------------------------------------------
# Per-subject and per-cell parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    """One synthetic subject: its id as it appears in file names, its label and its stain/morphology."""

    sid: str  # "57" or "H10"
    label: int
    h_vec: np.ndarray
    e_vec: np.ndarray
    h_scale: float
    e_scale: float
    illum: np.ndarray  # per-channel incident light, 0..255
    size_factor: float
    nc_shift: float
    irregularity: float


def _subject_rng(seed: int, label: int, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, label, number])


def make_subject(seed: int, label: int, number: int) -> _Subject:
    rng = _subject_rng(seed, label, number)

    def unit(v):
        return v / np.linalg.norm(v)

    h_vec = unit(np.abs(_H_OD + rng.normal(0.0, 0.05, 3)))
    e_vec = unit(np.abs(_E_OD + rng.normal(0.0, 0.05, 3)))
    base = rng.uniform(205.0, 252.0)
    illum = np.clip(base * (1.0 + rng.normal(0.0, 0.035, 3)), 150.0, 255.0)
    sid = f"H{number}" if label == LABEL_HEM else str(number)
    return _Subject(
        sid=sid,
        label=label,
        h_vec=h_vec,
        e_vec=e_vec,
        h_scale=float(np.clip(rng.normal(1.0, 0.14), 0.65, 1.4)),
        e_scale=float(np.clip(rng.normal(1.0, 0.2), 0.5, 1.6)),
        illum=illum,
        size_factor=float(np.clip(rng.normal(1.0, 0.07), 0.8, 1.2)),
        nc_shift=float(rng.normal(0.0, 0.025)),
        irregularity=float(np.clip(rng.normal(1.0, 0.2), 0.5, 1.6)),
    )


def _lowres_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth zero-mean, unit-ish-variance noise with blobs of about ``cell_px`` pixels (bicubic upsampling)."""
    h, w = shape
    gh = max(2, int(math.ceil(h / cell_px)) + 1)
    gw = max(2, int(math.ceil(w / cell_px)) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float32)
    sd = float(out.std())
    return out / sd if sd > 0 else out


def _radius(z: np.ndarray, amps: np.ndarray, phases: np.ndarray, k0: int) -> np.ndarray:
    """1 + sum_k a_k cos(k*theta + phi_k) for k = k0.. evaluated through powers of z = exp(i*theta)."""
    out = np.ones(z.shape, dtype=np.float32)
    zk = z**k0
    for a, p in zip(amps, phases, strict=True):
        if a != 0.0:
            out += np.float32(a) * (zk * np.complex64(np.exp(1j * p))).real
        zk = zk * z
    return out


def render_cell(rng: np.random.Generator, subject: _Subject, size: int = 450) -> np.ndarray:
    """Render one cell of ``subject`` as a ``(size, size, 3)`` uint8 array on a black background."""
    s = size / 450.0
    is_all = subject.label == LABEL_ALL

    # --- cell geometry (pixels at 450x450, scaled by s) ---
    radius = (rng.normal(100.0, 14.0) if is_all else rng.normal(87.0, 12.0)) * subject.size_factor
    radius = float(np.clip(radius, 60.0, 150.0)) * s
    cell_amps = rng.normal(0.0, 0.035, 3) * np.array([1.0, 0.5, 0.35])  # k = 2, 3, 4
    cell_phases = rng.uniform(0, 2 * np.pi, 3)

    nc = (rng.normal(0.80, 0.055) if is_all else rng.normal(0.70, 0.06)) + subject.nc_shift
    nc = float(np.clip(nc, 0.5, 0.9))
    off_frac = rng.uniform(0.03, 0.12) if is_all else rng.uniform(0.06, 0.2)
    off_frac = min(off_frac, 0.95 - nc)
    off_ang = rng.uniform(0, 2 * np.pi)
    n_radius = nc * radius

    irr = subject.irregularity * (0.055 if is_all else 0.022)
    ks = np.arange(2, 9)
    nuc_amps = rng.normal(0.0, 1.0, ks.size) * irr / np.sqrt(ks - 1)
    nuc_phases = rng.uniform(0, 2 * np.pi, ks.size)
    has_cleft = rng.random() < (0.65 if is_all else 0.15)
    cleft_depth = (rng.uniform(0.12, 0.32) if is_all else rng.uniform(0.06, 0.16)) if has_cleft else 0.0
    cleft_ang = rng.uniform(0, 2 * np.pi)
    cleft_w = rng.uniform(0.18, 0.35)

    # --- chromatin ---
    density = rng.normal(1.08, 0.15) if is_all else rng.normal(1.28, 0.15)
    coarse_amp = rng.uniform(0.05, 0.14) if is_all else rng.uniform(0.09, 0.2)
    fine_amp = rng.uniform(0.08, 0.2) if is_all else rng.uniform(0.04, 0.12)
    n_nucleoli = int(rng.integers(1, 3)) if rng.random() < (0.55 if is_all else 0.1) else 0

    # --- placement: jitter the centre, compute only inside a bounding box ---
    jitter = 18.0 * s
    cy = size / 2 + rng.uniform(-jitter, jitter)
    cx = size / 2 + rng.uniform(-jitter, jitter)
    half = int(math.ceil(radius * (1.0 + np.abs(cell_amps).sum()) + 4))
    y0, y1 = max(0, int(cy) - half), min(size, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(size, int(cx) + half + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    shape = yy.shape

    def polar(py, px):
        dy, dx = yy - np.float32(py), xx - np.float32(px)
        d = np.hypot(dx, dy)
        z = (dx + 1j * dy).astype(np.complex64) / np.maximum(d, 1e-3)
        return d, z

    edge = max(0.8, 1.5 * s)
    d_cell, z_cell = polar(cy, cx)
    r_cell = radius * _radius(z_cell, cell_amps, cell_phases, 2)
    a_cell = np.clip((r_cell - d_cell) / edge + 0.5, 0.0, 1.0)

    ny = cy + off_frac * radius * math.sin(off_ang)
    nx = cx + off_frac * radius * math.cos(off_ang)
    d_nuc, z_nuc = polar(ny, nx)
    r_nuc = n_radius * _radius(z_nuc, nuc_amps, nuc_phases, 2)
    if cleft_depth > 0:
        dtheta = np.angle(z_nuc * np.complex64(np.exp(-1j * cleft_ang)))
        r_nuc = r_nuc * (1.0 - np.float32(cleft_depth) * np.exp(-0.5 * (dtheta / np.float32(cleft_w)) ** 2))
    a_nuc = np.clip((r_nuc - d_nuc) / edge + 0.5, 0.0, 1.0) * a_cell

    coarse = _lowres_noise(rng, shape, 14.0 * s)
    fine = _lowres_noise(rng, shape, 3.0 * s)
    conc_h_nuc = density * (1.0 + coarse_amp * coarse + fine_amp * fine)
    for _ in range(n_nucleoli):
        rr = rng.uniform(0.0, 0.45) * n_radius
        aa = rng.uniform(0, 2 * np.pi)
        nr = rng.uniform(6.0, 11.0) * s
        d = np.hypot(yy - (ny + rr * math.sin(aa)), xx - (nx + rr * math.cos(aa)))
        conc_h_nuc = conc_h_nuc - 0.45 * density * np.clip((nr - d) / (2.0 * edge) + 0.5, 0.0, 1.0)
    conc_h_nuc = np.maximum(conc_h_nuc, 0.15)

    cyto_noise = _lowres_noise(rng, shape, 10.0 * s)
    conc_h_cyto = 0.20 + 0.03 * cyto_noise
    conc_e_cyto = 0.30 + 0.04 * cyto_noise
    conc_e_nuc = 0.32

    conc_h = (conc_h_cyto + a_nuc * (conc_h_nuc - conc_h_cyto)) * subject.h_scale
    conc_e = (conc_e_cyto + a_nuc * (conc_e_nuc - conc_e_cyto)) * subject.e_scale
    od = conc_h[..., None] * subject.h_vec.astype(np.float32) + conc_e[..., None] * subject.e_vec.astype(np.float32)
    rgb = subject.illum.astype(np.float32) * np.exp(-od)
    rgb += rng.normal(0.0, 2.5, rgb.shape).astype(np.float32)
    rgb = np.clip(rgb * a_cell[..., None], 0.0, 255.0)

    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[y0:y1, x0:x1] = np.rint(rgb).astype(np.uint8)
    return out
