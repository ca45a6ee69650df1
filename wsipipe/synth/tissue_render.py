"""Procedural H&E-like rendering of a :class:`~wsipipe.synth.layout.SlideLayout` (pure numpy).

Colour model: Beer-Lambert. Each pixel has a haematoxylin and an eosin concentration (plus
pen-ink optical density); RGB = glass * exp(-(C_H * h_vec + C_E * e_vec + ink)).

* glass: near-white (~241) with faint sensor grain;
* normal tissue: eosin stroma made of wavy collagen fibres (anisotropic periodic noise,
  domain-warped) with pale clefts, and sparse, small, regularly spaced nuclei (jittered
  grid; round lymphocyte-like or spindle fibroblast-like, aligned with the fibres);
* tumour: crowded (full-jitter dense grid), larger, irregular (2nd/3rd harmonic outline),
  hyperchromatic nuclei with coarse chromatin over pale cytoplasm split into nests by thin
  retraction clefts. Concentrations are balanced so tumour and normal tiles have a similar
  MEAN colour: texture, not colour, tells them apart.

Nuclei come from slide-wide hashed point sets (one candidate per grid cell, all attributes
hashed from the cell index), so a region renders identically however the slide is tiled.
At ``downsample >= 1.5`` nuclei are rendered as their expected density (mean field), which
matches a block average of level 0 in colour.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from wsipipe.errors import ConfigError
from wsipipe.synth.layout import Blob, PenStroke, SlideLayout
from wsipipe.synth.noise import (
    coarse_axis,
    periodic_texture,
    sample_texture,
    sample_texture_grid,
    upsample_linear,
    value_noise_grid,
    value_noise_points,
)
from wsipipe.synth.nuclei import NORMAL_P, TUMOUR_P, Nuclei, candidates, mean_field, stamp

__all__ = ["TissueRenderer"]

F32 = np.float32

# Concentration recipe (dimensionless OD units along the stain vectors).
_E_STROMA = 0.72  # eosin of normal stroma
_H_STROMA = 0.2  # background haematoxylin of stroma
_E_TUMOUR = 0.5  # eosin of tumour cytoplasm
_H_TUMOUR = 0.1  # background haematoxylin of tumour cytoplasm
_MAX_PIXELS = 1 << 19  # pixels rendered per internal call (memory bound)


class TissueRenderer:
    """``render(x, y, w, h, downsample) -> (h, w, 3) uint8`` for one slide layout.

    Callable with the signature :func:`wsipipe.synth.svs.write_svs` expects. Building it
    draws the slide's periodic textures (~0.2 s); rendering is then deterministic.
    """

    def __init__(self, layout: SlideLayout) -> None:
        self.layout = layout
        self.seed = layout.seed
        px = layout.px
        rng = np.random.default_rng([layout.seed, 0x7E47])
        a1, a2 = layout.fibre_angles
        self.fibre_sigma = max(px(1.1), 1.0)
        self.fibres = (
            periodic_texture(rng, 1024, px(20.0), self.fibre_sigma, a1),
            periodic_texture(rng, 1024, px(20.0), self.fibre_sigma, a2),
        )
        self.fine = periodic_texture(rng, 512, max(px(0.5), 0.7))  # chromatin, grain
        self.medium = periodic_texture(rng, 512, px(3.0))  # cytoplasm mottling
        self.nests = periodic_texture(rng, 1024, px(12.0))  # tumour cleft network
        self.grain = periodic_texture(rng, 256, 0.5)  # sensor noise
        s = layout.stain
        self.glass = np.array(s.glass, F32)
        self.hema = np.array(s.hema, F32) * F32(s.hema_gain)
        self.eosin = np.array(s.eosin, F32) * F32(s.eosin_gain)
        self.margin = px(14.0)  # reach of edge noise and nuclei beyond a shape's bbox

    # ---------------------------------------------------------------------------- fields
    def _rag_points(self, x: np.ndarray, y: np.ndarray, salt: int, amp_um: float) -> np.ndarray:
        px = self.layout.px
        return value_noise_points(self.seed, x, y, px(18.0), salt) * F32(px(amp_um)) + (
            value_noise_points(self.seed, x, y, px(5.0), salt + 1) * F32(px(amp_um * 0.35))
        )

    @staticmethod
    def _max_sd(blobs: list[Blob], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        d = blobs[0].signed_distance(xs, ys)
        for b in blobs[1:]:
            d = np.maximum(d, b.signed_distance(xs, ys))
        return d

    def _membership(
        self,
        sections: list[Blob],
        holes: list[Blob],
        tumours: list[Blob],
        x: np.ndarray,
        y: np.ndarray,
        rag: np.ndarray,
        rag_t: np.ndarray | None,
        soft: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tissue fraction t and tumour fraction m in [0, 1] at (broadcast) points."""
        d_sec = self._max_sd(sections, x, y) + rag
        d_hole = self._max_sd(holes, x, y) + rag * F32(0.5) if holes else None
        d_tum = self._max_sd(tumours, x, y) + rag_t if tumours and rag_t is not None else None
        return self._fractions(d_sec, d_hole, d_tum, soft)

    def _fractions(
        self,
        d_sec: np.ndarray,
        d_hole: np.ndarray | None,
        d_tum: np.ndarray | None,
        soft: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anti-aliased tissue / tumour fractions from signed distances (px, inside > 0)."""
        t = np.clip(d_sec, -soft, soft) * F32(0.5 / soft) + F32(0.5)
        if d_hole is not None:
            t = t * (np.clip(-d_hole, -soft, soft) * F32(0.5 / soft) + F32(0.5))
        if d_tum is None:
            return t, np.zeros_like(t)
        soft_t = max(soft, self.layout.px(2.0))
        return t, (np.clip(d_tum, -soft_t, soft_t) * F32(0.5 / soft_t) + F32(0.5)) * t

    def _grid_membership(
        self,
        sections: list[Blob],
        holes: list[Blob],
        tumours: list[Blob],
        xs: np.ndarray,
        ys: np.ndarray,
        ds: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(t, m) on the grid ys x xs; shape distances come from a coarse grid (smooth)."""
        spacing = max(4.0, ds)
        cx, ix, fx = coarse_axis(xs, spacing)
        cy, iy, fy = coarse_axis(ys, spacing)
        CX, CY = cx.astype(F32)[None, :], cy.astype(F32)[:, None]

        def field(blobs: list[Blob], salt: int, amp_um: float, fine_frac: float) -> np.ndarray:
            px = self.layout.px
            coarse = self._max_sd(blobs, CX, CY) + value_noise_grid(
                self.seed, cx, cy, px(18.0), salt
            ) * F32(px(amp_um))
            d = upsample_linear(coarse, ix, fx, iy, fy)
            return d + value_noise_grid(self.seed, xs, ys, px(5.0), salt + 1) * F32(
                px(amp_um * fine_frac)
            )

        d_sec = field(sections, 1, 4.0, 0.35)
        d_hole = field(holes, 1, 2.0, 0.35) if holes else None
        d_tum = field(tumours, 11, 7.0, 0.35) if tumours else None
        return self._fractions(d_sec, d_hole, d_tum, max(0.5 * ds, 0.5))

    # ---------------------------------------------------------------------------- nuclei
    def _fibre_blend(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        v = value_noise_grid(self.seed, xs, ys, self.layout.px(90.0), 31)
        return np.clip(F32(0.5) + F32(1.4) * v, 0.0, 1.0)

    def _fibre_angle_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Dominant collagen direction (radians) at points: the texture that dominates there."""
        v = value_noise_points(self.seed, x, y, self.layout.px(90.0), 31)
        a1, a2 = self.layout.fibre_angles
        return np.where(F32(0.5) + F32(1.4) * v < 0.5, F32(a1), F32(a2))

    def _nuclei(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        sections: list[Blob],
        holes: list[Blob],
        tumours: list[Blob],
    ) -> list[Nuclei]:
        """Accepted nuclei (normal, tumour) whose discs may touch the region."""
        out = []
        for tumour in (False, True):
            if tumour and not tumours:
                continue
            n, u_acc, u_kind = candidates(
                self.seed, self.layout.mpp, (x0, y0, x1, y1), tumour, self._fibre_angle_points
            )
            rag = self._rag_points(n.cx, n.cy, 1, 4.0)
            rag_t = self._rag_points(n.cx, n.cy, 11, 7.0) if tumours else None
            t, m = self._membership(sections, holes, tumours, n.cx, n.cy, rag, rag_t, 0.5)
            if tumour:
                keep = (t > 0.5) & (u_kind < m) & (u_acc < TUMOUR_P)
            else:
                dens = NORMAL_P * (
                    1.0 + 0.35 * value_noise_points(self.seed, n.cx, n.cy, self.layout.px(60.0), 41)
                )
                keep = (t > 0.5) & (u_kind >= m) & (u_acc < dens)
            out.append(n.select(keep))
        return out

    # ---------------------------------------------------------------------------- render
    def __call__(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """Render the (h, w, 3) uint8 region with top-left (x, y) level-0 px at ``downsample``.

        Output pixel (i, j) samples level-0 point (x + (j + 0.5) ds - 0.5, y + (i + 0.5) ds
        - 0.5). Large regions are rendered in bands of rows (bounded memory, same pixels).
        """
        ds = float(downsample)
        if w < 1 or h < 1 or not (math.isfinite(ds) and ds > 0):
            raise ConfigError(f"render region {w}x{h} at downsample {ds} is invalid")
        xs = (x + (np.arange(w) + 0.5) * ds - 0.5).astype(np.float64)
        ys = (y + (np.arange(h) + 0.5) * ds - 0.5).astype(np.float64)
        band = max(1, _MAX_PIXELS // w)
        if h <= band:
            return self._render(xs, ys, ds)
        out = np.empty((h, w, 3), np.uint8)
        for r in range(0, h, band):
            out[r : r + band] = self._render(xs, ys[r : r + band], ds)
        return out

    def _render(self, xs: np.ndarray, ys: np.ndarray, ds: float) -> np.ndarray:
        lay = self.layout
        h, w = len(ys), len(xs)
        half = 0.5 * ds
        x0, y0, x1, y1 = (
            xs[0] + 0.5 - half,
            ys[0] + 0.5 - half,
            xs[-1] + 0.5 + half,
            ys[-1] + 0.5 + half,
        )
        sections = [s for s in lay.sections if s.intersects(x0, y0, x1, y1, self.margin)]
        pens = [p for p in lay.pens if _bbox_hit(p.bbox(ds), x0, y0, x1, y1)]
        grain = sample_texture_grid(self.grain, np.floor(xs / ds), np.floor(ys / ds))
        grain = (grain * F32(1.2) + F32(0.5))[:, :, None]
        if not sections and not pens:  # bare glass
            return np.clip(self.glass + grain, 0, 255).astype(np.uint8)
        od = np.zeros((h, w, 3), F32)
        if sections:
            self._tissue_od(od, xs, ys, ds, sections, x0, y0, x1, y1)
        for pen in pens:
            self._pen_od(od, pen, xs, ys, ds)
        rgb = self.glass * np.exp(-od) + grain
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def _tissue_od(
        self,
        od: np.ndarray,
        xs: np.ndarray,
        ys: np.ndarray,
        ds: float,
        sections: list[Blob],
        x0: float,
        y0: float,
        x1: float,
        y1: float,
    ) -> None:
        lay, px, m_ = self.layout, self.layout.px, self.margin
        holes = [b for b in lay.holes if b.intersects(x0, y0, x1, y1, m_)]
        tumours = [b for b in lay.tumours if b.intersects(x0, y0, x1, y1, m_)]
        X = xs.astype(F32)[None, :]
        Y = ys.astype(F32)[:, None]
        t, m = self._grid_membership(sections, holes, tumours, xs, ys, ds)
        if not t.any():
            return
        # --- stroma: wavy collagen fibres ------------------------------------------------
        att = F32(1.0 / math.sqrt(1.0 + (ds / (2.0 * self.fibre_sigma)) ** 2))
        wx = value_noise_grid(self.seed, xs, ys, px(70.0), 21) * F32(px(14.0))
        wy = value_noise_grid(self.seed, xs, ys, px(70.0), 22) * F32(px(14.0))
        Xw, Yw = X + wx, Y + wy
        blend = self._fibre_blend(xs, ys)
        f = (
            sample_texture(self.fibres[0], Xw, Yw) * (1 - blend)
            + sample_texture(self.fibres[1], Xw, Yw) * blend
        )
        f = f / np.sqrt((1 - blend) ** 2 + blend**2) * att
        big = value_noise_grid(self.seed, xs, ys, px(120.0), 23)
        # fibre contrast varies between bundles; pale clefts where the fibre field is low
        contrast = np.clip(0.75 + 0.5 * value_noise_grid(self.seed, xs, ys, px(40.0), 24), 0.3, 1.2)
        gap = np.clip((-1.25 - f) * 1.6, 0.0, 0.85)
        e_str = (
            F32(_E_STROMA)
            * (1.0 + 0.28 * np.tanh(1.3 * f) * contrast)
            * (1 - gap)
            * (1.0 + 0.13 * big)
        )
        med = sample_texture_grid(self.medium, np.floor(xs), np.floor(ys))
        h_str = F32(_H_STROMA) * (1.0 + 0.3 * med)
        # --- tumour: pale cytoplasm in nests separated by thin clefts ----------------------
        if m.any():
            nest = sample_texture_grid(self.nests, np.floor(xs), np.floor(ys))
            cleft = np.clip(1.0 - np.abs(nest) / F32(0.09), 0.0, 1.0) * F32(0.85 * att)
            e_bg = e_str * (1 - m) + m * F32(_E_TUMOUR) * (1.0 + 0.25 * med) * (1 - cleft)
            h_bg = h_str * (1 - m) + m * F32(_H_TUMOUR) * (1.0 + 0.2 * med) * (1 - cleft)
        else:
            e_bg, h_bg = e_str, h_str
        # --- nuclei ------------------------------------------------------------------------
        if ds < 1.5:
            cov = np.zeros_like(t)
            hn = np.zeros_like(t)
            ix0, iy0 = math.floor(xs[0] + 0.5), math.floor(ys[0] + 0.5)
            for nuc in self._nuclei(x0, y0, x1, y1, sections, holes, tumours):
                c, d = stamp(nuc, ix0, iy0, len(xs), len(ys))
                cov += c
                hn += d
            fine = sample_texture_grid(self.fine, np.floor(xs), np.floor(ys))
            hn = hn * (1.0 + (0.14 + 0.16 * m) * fine)
            cov = np.minimum(cov, 1.0)
            hn = np.minimum(hn, 3.2)
        else:
            cov, hn = mean_field(t, m, self.layout.mpp)
        c_h = (h_bg * (1 - cov) + hn) * t
        c_e = e_bg * (1 - 0.7 * cov) * t
        od += c_h[:, :, None] * self.hema + c_e[:, :, None] * self.eosin

    def _pen_od(
        self, od: np.ndarray, pen: PenStroke, xs: np.ndarray, ys: np.ndarray, ds: float
    ) -> None:
        pts = np.asarray(pen.points, np.float64)
        half = pen.width / 2
        spacing = max(4.0, ds)
        # segments that can matter to any coarse sample (which extend one spacing beyond the
        # region); keeping exactly these makes the result independent of the region's extent
        reach = half + 2 * spacing + ds
        x0, x1 = xs[0] - reach, xs[-1] + reach
        y0, y1 = ys[0] - reach, ys[-1] + reach
        cx, ix, fx = coarse_axis(xs, spacing)
        cy, iy, fy = coarse_axis(ys, spacing)
        X = cx[None, :].astype(F32)
        Y = cy[:, None].astype(F32)
        dist = np.full((len(cy), len(cx)), np.float32(1e9), F32)
        for (ax, ay), (bx, by) in itertools.pairwise(pts):
            if max(ax, bx) < x0 or min(ax, bx) > x1 or max(ay, by) < y0 or min(ay, by) > y1:
                continue
            vx, vy = bx - ax, by - ay
            ll = vx * vx + vy * vy + 1e-9
            tt = np.clip(((X - ax) * vx + (Y - ay) * vy) / F32(ll), 0.0, 1.0)
            d = np.hypot(X - (ax + tt * vx), Y - (ay + tt * vy))
            dist = np.minimum(dist, d)
        if float(dist.min()) > half + 2 * spacing:
            return
        dist = upsample_linear(dist, ix, fx, iy, fy)
        edge = max(ds, 1.5)
        alpha = np.clip((half - dist) / F32(edge) + 0.5, 0.0, 1.0)
        streak = value_noise_grid(self.seed, xs, ys, self.layout.px(25.0), 61)
        alpha = alpha * (0.82 + 0.12 * streak)
        od += alpha[:, :, None] * np.array(pen.od, F32)


def _bbox_hit(
    b: tuple[float, float, float, float], x0: float, y0: float, x1: float, y1: float
) -> bool:
    return b[0] < x1 and b[2] > x0 and b[1] < y1 and b[3] > y0
