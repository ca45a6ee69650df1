"""Slide-wide random layout of a synthetic slide: tissue sections, holes, tumour foci, pen.

Everything random about a slide is drawn here, once, from its seed; the renderer
(:mod:`wsipipe.synth.tissue_render`) is then a pure function of (layout, region), so tiles
join seamlessly and the annotation polygons are exactly the shapes that were rendered.

Shapes are :class:`Blob` s -- noise-deformed ellipses whose boundary in polar form is
``rho = 1 + Re(sum_k c_k exp(i k theta))`` in the ellipse's normalised frame. Coordinates
and lengths are level-0 px unless a name says ``_um``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsipipe.errors import ConfigError
from wsipipe.synth.config import DEFAULT_TUMOUR_FRACTION

__all__ = ["Blob", "PenStroke", "SlideLayout", "Stain", "make_layout"]


@dataclass(frozen=True)
class Blob:
    """A noise-deformed ellipse. ``harmonics[j]`` is c_{j+2} as (real, imag)."""

    cx: float
    cy: float
    a: float  # semi-axis along ``angle``, px
    b: float  # semi-axis across, px
    angle: float  # radians
    harmonics: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0):
            raise ConfigError(f"Blob semi-axes a={self.a}, b={self.b} must be positive")
        if sum(math.hypot(*c) for c in self.harmonics) >= 0.8:
            raise ConfigError("Blob harmonics too large (sum of |c_k| must be < 0.8)")

    @property
    def radius(self) -> float:
        """Upper bound of the distance from the centre to the boundary, px."""
        return max(self.a, self.b) * (1.0 + sum(math.hypot(*c) for c in self.harmonics))

    def bbox(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        r = self.radius + margin
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def intersects(self, x0: float, y0: float, x1: float, y1: float, margin: float) -> bool:
        bx0, by0, bx1, by1 = self.bbox(margin)
        return bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0

    def signed_distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Approximate distance to the boundary in px (positive inside), broadcast xs/ys.

        Measured radially in the ellipse frame, so exact on the boundary and a good
        approximation within a few tens of px of it.
        """
        dx = np.asarray(xs, np.float32) - np.float32(self.cx)
        dy = np.asarray(ys, np.float32) - np.float32(self.cy)
        ca, sa = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        p = (dx * ca + dy * sa) / np.float32(self.a)
        q = (dy * ca - dx * sa) / np.float32(self.b)
        rho = np.sqrt(p * p + q * q) + np.float32(1e-6)
        c, s = p / rho, q / rho
        boundary: np.ndarray = np.ones_like(rho)
        ck, sk = c, s
        for re, im in self.harmonics:
            ck, sk = ck * c - sk * s, sk * c + ck * s  # cos/sin of (k+1) theta
            boundary = boundary + np.float32(re) * ck - np.float32(im) * sk
        scale = np.sqrt((np.float32(self.a) * c) ** 2 + (np.float32(self.b) * s) ** 2)
        return (boundary - rho) * scale

    def polygon(self, n: int = 256) -> Polygon:
        """The boundary as a shapely Polygon with ``n`` vertices (level-0 px)."""
        theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        r = np.ones(n)
        for j, (re, im) in enumerate(self.harmonics):
            k = j + 2
            r += re * np.cos(k * theta) - im * np.sin(k * theta)
        u = self.a * r * np.cos(theta)
        v = self.b * r * np.sin(theta)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        x = self.cx + u * ca - v * sa
        y = self.cy + u * sa + v * ca
        return Polygon(np.column_stack([x, y]))  # star-shaped (|harmonics| < 1): simple


@dataclass(frozen=True)
class PenStroke:
    """A thick ink stroke along a polyline (level-0 px) with optical density ``od`` (RGB)."""

    points: tuple[tuple[float, float], ...]
    width: float
    od: tuple[float, float, float]

    def bbox(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        pts = np.asarray(self.points)
        m = self.width + margin
        return (pts[:, 0].min() - m, pts[:, 1].min() - m, pts[:, 0].max() + m, pts[:, 1].max() + m)


@dataclass(frozen=True)
class Stain:
    """Per-slide stain appearance: Beer-Lambert optical-density unit vectors (RGB)."""

    glass: tuple[float, float, float]  # RGB of empty glass (incident light)
    hema: tuple[float, float, float]  # haematoxylin OD direction
    eosin: tuple[float, float, float]  # eosin OD direction
    hema_gain: float = 1.0
    eosin_gain: float = 1.0


@dataclass(frozen=True)
class SlideLayout:
    width: int
    height: int
    mpp: float
    seed: int
    stain: Stain
    sections: tuple[Blob, ...]
    holes: tuple[Blob, ...] = ()
    tumours: tuple[Blob, ...] = ()
    pens: tuple[PenStroke, ...] = ()
    fibre_angles: tuple[float, float] = (0.3, 1.9)
    tumour_polygons: tuple[Polygon, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ConfigError(f"slide size {self.width}x{self.height} too small; use >= 16 px")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"mpp={self.mpp!r} must be a positive number of um per pixel")
        if not self.sections:
            raise ConfigError("a slide layout needs at least one tissue section")

    def px(self, um: float) -> float:
        """Convert micrometres to level-0 px."""
        return um / self.mpp

    def tissue_geometry(self) -> shapely.Geometry:
        """Union of the tissue sections minus the holes (level-0 px)."""
        tissue = shapely.union_all([s.polygon() for s in self.sections])
        if self.holes:
            tissue = tissue.difference(shapely.union_all([h.polygon() for h in self.holes]))
        return tissue


def _harmonics(
    rng: np.random.Generator, kmax: int, amp: float, decay: float = 1.0
) -> tuple[tuple[float, float], ...]:
    out = []
    for k in range(2, kmax + 1):
        mag = amp * rng.uniform(0.4, 1.0) / (k - 1) ** decay
        ph = rng.uniform(0, 2 * np.pi)
        out.append((float(mag * math.cos(ph)), float(mag * math.sin(ph))))
    return tuple(out)


def _fit(axes: tuple[float, float], harm: tuple[tuple[float, float], ...], limit: float) -> float:
    """Scale factor so that max(a, b) * (1 + sum|c|) <= limit."""
    r = max(axes) * (1.0 + sum(math.hypot(*c) for c in harm))
    return min(1.0, limit / r)


def _make_sections(
    rng: np.random.Generator, w: int, h: int, fill: tuple[float, float] = (0.7, 0.9)
) -> list[Blob]:
    """1-3 sections side by side along the long axis, each spanning ``fill`` (drawn
    uniformly) of its cell's width and height before the deformation."""
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    horizontal = w >= h
    cells = []
    for i in range(n):
        if horizontal:
            cells.append((w * i / n, 0.0, w / n, float(h)))
        else:
            cells.append((0.0, h * i / n, float(w), h / n))
    sections = []
    for cx0, cy0, cw, ch in cells:
        harm = _harmonics(rng, 7, 0.2, decay=0.8)
        a = 0.5 * cw * rng.uniform(*fill)
        b = 0.5 * ch * rng.uniform(*fill)
        angle = float(rng.uniform(-0.3, 0.3))
        cx = cx0 + cw / 2 + rng.uniform(-0.04, 0.04) * cw
        cy = cy0 + ch / 2 + rng.uniform(-0.04, 0.04) * ch
        margin = 0.03 * min(cw, ch)
        for _ in range(60):  # shrink until the section lies inside its cell
            blob = Blob(float(cx), float(cy), float(a), float(b), angle, harm)
            bx0, by0, bx1, by1 = blob.polygon(128).bounds
            if (
                bx0 >= cx0 + margin
                and by0 >= cy0 + margin
                and bx1 <= cx0 + cw - margin
                and by1 <= cy0 + ch - margin
            ):
                break
            a, b = a * 0.95, b * 0.95
        sections.append(blob)
    return sections


def _sample_inside(
    rng: np.random.Generator,
    blob: Blob,
    clearance: float,
    others: list[tuple[float, float, float]],
    tries: int = 256,
) -> tuple[float, float] | None:
    """A random point at least ``clearance`` px inside ``blob`` and clear of (x, y, r) discs.

    Draws ``tries`` candidates at once (deterministic for a given rng state) and returns the
    first that qualifies, using exact polygon distances.
    """
    x0, y0, x1, y1 = blob.bbox()
    xs, ys = rng.uniform(x0, x1, tries), rng.uniform(y0, y1, tries)
    poly = blob.polygon()
    ok = shapely.contains_xy(poly, xs, ys)
    ok &= shapely.distance(poly.exterior, shapely.points(xs, ys)) >= clearance
    for ox, oy, r in others:
        ok &= np.hypot(xs - ox, ys - oy) >= r
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    return float(xs[hits[0]]), float(ys[hits[0]])


def _make_tumours(
    rng: np.random.Generator,
    sections: list[Blob],
    mpp: float,
    fraction_range: tuple[float, float] = DEFAULT_TUMOUR_FRACTION,
) -> tuple[list[Blob], list[Polygon]]:
    tissue_area = sum(s.polygon().area for s in sections)
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    fraction = rng.uniform(*fraction_range)
    shares = rng.dirichlet(np.full(n, 2.0))
    # foci are 150-500 um across at the default burden; a larger requested burden scales the
    # upper size with it (same area share per focus), sections permitting
    r_max = 250.0 / mpp * math.sqrt(max(1.0, fraction_range[1] / DEFAULT_TUMOUR_FRACTION[1]))
    foci: list[Blob] = []
    polys: list[Polygon] = []
    placed: list[tuple[float, float, float]] = []

    def place(radius: float, clearance: float) -> None:
        """One focus of about ``radius`` px in a random section, ``clearance * r`` inside it
        and clear of the foci placed so far (shrunk up to 0.45x to fit; skipped if not)."""
        sec = sections[int(rng.integers(len(sections)))]
        radius = min(radius, 0.45 * min(sec.a, sec.b))
        harm = _harmonics(rng, 7, 0.2, decay=0.6)
        spot = None
        for shrink in (1.0, 0.8, 0.6, 0.45):
            r = radius * shrink
            spot = _sample_inside(rng, sec, clearance * r, [(x, y, rr + r) for x, y, rr in placed])
            if spot is not None:
                radius = r
                break
        if spot is None:
            return
        elong = rng.uniform(1.0, 1.5)
        a, b = radius * math.sqrt(elong), radius / math.sqrt(elong)
        s = _fit((a, b), harm, limit=1.4 * radius)
        blob = Blob(spot[0], spot[1], a * s, b * s, float(rng.uniform(0, np.pi)), harm)
        clipped = blob.polygon().intersection(sec.polygon())
        if clipped.is_empty:
            return
        foci.append(blob)
        placed.append((spot[0], spot[1], blob.radius))
        polys.append(clipped)

    for share in shares:
        radius = math.sqrt(fraction * share * tissue_area / math.pi)
        place(float(np.clip(radius, 75.0 / mpp, r_max)), clearance=1.5)
    # a burden above the default range (macro-metastases): small sections cap the foci, so
    # top up with more foci (allowed nearer the section edge) until at least 80 % of the
    # drawn burden is tumour, or 8 foci. The default range keeps its 1-3 small foci.
    target = fraction * tissue_area
    macro = fraction_range[1] > DEFAULT_TUMOUR_FRACTION[1]
    while macro and len(foci) < 8 and sum(p.area for p in polys) < 0.8 * target:
        missing = target - sum(p.area for p in polys)
        before = len(foci)
        place(float(np.clip(math.sqrt(missing / math.pi), 75.0 / mpp, r_max)), clearance=0.5)
        if len(foci) == before:
            break
    merged = shapely.union_all(polys) if polys else Polygon()
    parts = list(getattr(merged, "geoms", [merged]))
    return foci, [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


def _make_holes(
    rng: np.random.Generator, sections: list[Blob], tumours: list[Blob], mpp: float
) -> list[Blob]:
    holes = []
    avoid = [(t.cx, t.cy, t.radius + 10.0 / mpp) for t in tumours]
    for sec in sections:
        for _ in range(int(rng.integers(1, 5))):
            if rng.uniform() < 0.6:  # lumen: round-ish
                r = rng.uniform(20.0, 70.0) / mpp
                a, b = r * rng.uniform(1.0, 1.4), r * rng.uniform(0.7, 1.0)
                harm = _harmonics(rng, 5, 0.2)
            else:  # tear: long and thin
                a, b = rng.uniform(60.0, 220.0) / mpp, rng.uniform(3.0, 9.0) / mpp
                harm = _harmonics(rng, 3, 0.08)
            blob_r = max(a, b) * (1 + sum(math.hypot(*c) for c in harm))
            spot = _sample_inside(
                rng, sec, blob_r + 15.0 / mpp, [(x, y, r + blob_r) for x, y, r in avoid]
            )
            if spot is None:
                continue
            hole = Blob(spot[0], spot[1], float(a), float(b), float(rng.uniform(0, np.pi)), harm)
            holes.append(hole)
            avoid.append((spot[0], spot[1], blob_r))
    return holes


_INKS = {
    "blue": (1.75, 1.05, 0.35),
    "green": (1.45, 0.45, 0.85),
    "black": (1.9, 1.85, 1.7),
}


def _make_pens(rng: np.random.Generator, sections: list[Blob], w: int, h: int) -> list[PenStroke]:
    strokes = []
    width = float(rng.uniform(0.012, 0.022) * min(w, h))
    ink = list(_INKS)[int(rng.integers(len(_INKS)))]
    od = tuple(float(v * rng.uniform(0.85, 1.1)) for v in _INKS[ink])
    for _ in range(int(rng.integers(1, 3))):
        sec = sections[int(rng.integers(len(sections)))]
        if rng.uniform() < 0.6:  # an arc circling part of the section, across its edge
            r0 = 0.5 * (sec.a + sec.b) * rng.uniform(0.95, 1.2)
            start = rng.uniform(0, 2 * np.pi)
            span = rng.uniform(1.2, 3.2)
            t = np.linspace(start, start + span, 48)
            wob = 1.0 + 0.06 * np.sin(t * rng.uniform(2, 5) + rng.uniform(0, 6))
            xs = sec.cx + r0 * wob * np.cos(t) * (sec.a / max(sec.a, sec.b)) ** 0.3
            ys = sec.cy + r0 * wob * np.sin(t) * (sec.b / max(sec.a, sec.b)) ** 0.3
        else:  # a curved tick from the glass into the tissue edge
            ang = rng.uniform(0, 2 * np.pi)
            ex = sec.cx + sec.a * 0.85 * math.cos(ang)
            ey = sec.cy + sec.b * 0.85 * math.sin(ang)
            length = rng.uniform(0.15, 0.3) * min(w, h)
            sx, sy = ex + length * math.cos(ang), ey + length * math.sin(ang)
            ctrl = (
                0.5 * (sx + ex) + rng.normal(0, 0.3) * length,
                0.5 * (sy + ey) + rng.normal(0, 0.3) * length,
            )
            t = np.linspace(0, 1, 32)[:, None]
            p = (
                (1 - t) ** 2 * np.array([sx, sy])
                + 2 * (1 - t) * t * np.array(ctrl)
                + t**2 * np.array([ex, ey])
            )
            xs, ys = p[:, 0], p[:, 1]
        xs = np.clip(xs, 0, w - 1)
        ys = np.clip(ys, 0, h - 1)
        pts = tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        strokes.append(PenStroke(pts, width * float(rng.uniform(0.8, 1.2)), od))  # type: ignore[arg-type]
    return strokes


def _make_stain(rng: np.random.Generator) -> Stain:
    def unit(v: np.ndarray) -> tuple[float, float, float]:
        v = v / np.linalg.norm(v)
        return (float(v[0]), float(v[1]), float(v[2]))

    glass = 241.0 + rng.normal(0, 1.5) + rng.normal(0, 1.0, 3)
    hema = unit(np.array([0.56, 0.72, 0.41]) + rng.normal(0, 0.03, 3))
    eosin = unit(np.array([0.20, 0.80, 0.56]) + rng.normal(0, 0.03, 3))
    return Stain(
        glass=(float(glass[0]), float(glass[1]), float(glass[2])),
        hema=hema,
        eosin=eosin,
        hema_gain=float(rng.uniform(0.9, 1.1)),
        eosin_gain=float(rng.uniform(0.85, 1.15)),
    )


def make_layout(
    width: int,
    height: int,
    mpp: float,
    seed: int,
    tumour: bool,
    pen: bool,
    tumour_fraction: tuple[float, float] = DEFAULT_TUMOUR_FRACTION,
) -> SlideLayout:
    """Draw a slide's layout from ``seed``: 1-3 sections, holes, tumour foci, pen strokes.

    Tumour foci (positive slides) are 1-3 blobs ~150-500 um across (smaller when a section
    is small) whose total area is drawn uniformly from ``tumour_fraction`` of the tissue
    area (by default 5-16 %, before the size limits: a median ~5 %). Above the default range
    (e.g. 0.15-0.35, macro-metastases) foci may be larger, and more foci (up to 8) are added
    where small sections cap them, until 80 % of that area is reached. Foci lie inside one
    section each and clear of holes.
    """
    if width < 16 or height < 16:
        raise ConfigError(f"slide size {width}x{height} too small; use >= 16 px")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp={mpp!r} must be a positive number of um per pixel")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED])
    stain = _make_stain(rng)
    sections = _make_sections(rng, width, height)
    lo, hi = tumour_fraction
    if not (0.0 < lo <= hi < 1.0):
        raise ConfigError(
            f"tumour_fraction={tumour_fraction!r} must be two fractions 0 < low <= high < 1"
        )
    foci, polys = _make_tumours(rng, sections, mpp, (lo, hi)) if tumour else ([], [])
    holes = _make_holes(rng, sections, foci, mpp)
    pens = _make_pens(rng, sections, width, height) if pen else []
    base = float(rng.uniform(0, np.pi))
    return SlideLayout(
        width=width,
        height=height,
        mpp=mpp,
        seed=int(seed) & 0xFFFFFFFF,
        stain=stain,
        sections=tuple(sections),
        holes=tuple(holes),
        tumours=tuple(foci),
        pens=tuple(pens),
        fibre_angles=(base, base + float(rng.uniform(0.6, 1.4))),
        tumour_polygons=tuple(polys),
    )
