"""People made of primitives, and their insertion into a view with correct occlusion and anti-aliased edges.

A figure stands on a horizontal ground plane (world up is +Z, as in Blender and the built-in scene). It is
built in its own frame (feet at the origin, facing +x) from a box torso, capsule legs and arms, sphere hands
and head and an optional cylinder hat, then turned by ``yaw`` and moved to ``position``. Proportions follow a
rough adult: legs 45% of the height, torso 32%, head 15%.

Insertion (:func:`insert_figures`) ray-traces ``ss x ss`` sub-pixel rays per pixel of each figure's screen
box. A sub-ray that hits a figure is compared with the scene depth at that pixel: in front, it shows the
figure; behind, the scene content (of coverage ``alpha``) stays on top and the figure only replaces the
background share ``1 - alpha``. The pixel is the mean over its sub-rays, so edges are anti-aliased, and its
personal-content label is that of the figure covering most of it, if figures cover at least half of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from privnerf.data.cameras import project_points, rays_from_pixels
from privnerf.data.primitives import Box, Capsule, Cylinder, Primitive, Sphere

PATTERNS = ("plain", "stripes", "checks", "dots")
LIGHT_DIR = (0.35, -0.25, 0.9)
"""Direction towards the (single, directional) light that shades the figures."""
AMBIENT = 0.45


@dataclass
class FigureStyle:
    """What makes one person recognisable: colours, pattern, hat, build."""

    shirt: tuple[float, float, float]
    trousers: tuple[float, float, float]
    skin: tuple[float, float, float]
    pattern: str = "plain"
    pattern_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hat: tuple[float, float, float] | None = None
    build: float = 1.0  # width factor


@dataclass
class Figure:
    """One person in the world: where, how tall, how posed, how dressed, and whose."""

    position: tuple[float, float]
    ground_z: float
    yaw: float
    height: float
    style: FigureStyle
    arm_angles: tuple[float, float] = (0.0, 0.0)  # forward swing of (left, right) arm, radians from hanging
    arm_spread: float = 0.15  # sideways raise of both arms, radians
    stride: float = 0.0  # forward swing of the left leg (the right swings back), radians
    owner: int = 0  # user index
    transient: bool = False  # True: appears in one view only
    _prims: list[tuple[Primitive, str]] = field(default_factory=list, repr=False, compare=False)

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("_prims", None)
        return d

    # -- geometry -------------------------------------------------------------------------------------
    def primitives(self) -> list[tuple[Primitive, str]]:
        """``(primitive, part)`` pairs in world coordinates; part is one of shirt/trousers/skin/hat."""
        if self._prims:
            return self._prims
        h, w = self.height, self.style.build
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        x0, y0, z0 = self.position[0], self.position[1], self.ground_z

        def world(p):  # figure frame -> world
            x, y, z = p
            return (x0 + cy * x - sy * y, y0 + sy * x + cy * y, z0 + z)

        def limb(top, length, swing, spread, side):
            # hanging straight down, then swung forward (about the figure's y axis) and out sideways
            dx = math.sin(swing) * math.cos(spread)
            dz = -math.cos(swing) * math.cos(spread)
            dy = side * math.sin(spread)
            return (top[0] + dx * length, top[1] + dy * length, top[2] + dz * length)

        prims: list[tuple[Primitive, str]] = []
        hip_z, leg_r = 0.45 * h, 0.05 * h * w
        for side, swing in ((1, self.stride), (-1, -self.stride)):
            hip = (0.0, side * 0.06 * h * w, hip_z)
            foot = limb(hip, hip_z - leg_r, swing, 0.04, side)
            prims.append((Capsule(world(hip), world(foot), leg_r), "trousers"))
        torso_half = (0.07 * h * w, 0.12 * h * w, 0.16 * h)
        torso_c = (0.0, 0.0, hip_z + torso_half[2])
        prims.append((Box(world(torso_c), torso_half, yaw=self.yaw), "shirt"))
        shoulder_z, arm_r, arm_len = hip_z + 0.29 * h, 0.035 * h * w, 0.33 * h
        for side, swing in ((1, self.arm_angles[0]), (-1, self.arm_angles[1])):
            shoulder = (0.0, side * (torso_half[1] + arm_r), shoulder_z)
            hand = limb(shoulder, arm_len, swing, self.arm_spread, side)
            prims.append((Capsule(world(shoulder), world(hand), arm_r), "shirt"))
            prims.append((Sphere(world(hand), 1.25 * arm_r), "skin"))
        neck_top = hip_z + 2 * torso_half[2]
        head_r = 0.075 * h
        head_c = (0.0, 0.0, neck_top + 0.02 * h + head_r)
        prims.append((Capsule(world((0.0, 0.0, neck_top - 0.01 * h)), world(head_c), 0.03 * h), "skin"))
        prims.append((Sphere(world(head_c), head_r), "skin"))
        if self.style.hat is not None:
            hc = world(head_c)
            prims.append((Cylinder(hc[0], hc[1], 1.05 * head_r, hc[2] + 0.45 * head_r, hc[2] + 1.3 * head_r), "hat"))
        self._prims = prims
        return prims

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bbox() for p, _ in self.primitives()]
        return np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0)

    def footprint_radius(self) -> float:
        """Radius of the ground circle the figure stands in (for placement without overlaps)."""
        return 0.2 * self.height * max(self.style.build, 1.0) + 0.25 * self.height * abs(math.sin(self.stride))

    # -- appearance -----------------------------------------------------------------------------------
    def albedo(self, part: str, p: torch.Tensor) -> torch.Tensor:
        """Colour ``(M, 3)`` of ``part`` at world points ``p`` ``(M, 3)``."""
        st = self.style
        base = {"shirt": st.shirt, "trousers": st.trousers, "skin": st.skin, "hat": st.hat or st.shirt}[part]
        out = torch.tensor(base, dtype=torch.float32).expand(p.shape[0], 3).clone()
        if part != "shirt" or st.pattern == "plain":
            return out
        z = (p[:, 2] - self.ground_z) / self.height
        # horizontal coordinate around the body axis, so patterns wrap round the torso and arms
        ang = torch.atan2(p[:, 1] - self.position[1], p[:, 0] - self.position[0])
        if st.pattern == "stripes":
            on = torch.frac(z * 22.0) < 0.5
        elif st.pattern == "checks":
            on = (torch.floor(z * 16.0) + torch.floor(ang * 4.0 / math.pi)) % 2 == 0
        else:  # dots
            u, v = torch.frac(z * 18.0) - 0.5, torch.frac(ang * 6.0 / math.pi) - 0.5
            on = u * u + v * v < 0.09
        return torch.where(on[:, None], torch.tensor(st.pattern_colour, dtype=torch.float32), out)


def trace_figure(fig: Figure, o: torch.Tensor, d: torch.Tensor, light_dir=None):
    """Nearest hit of ``fig`` along rays ``(M, 3)``: ``t (M,)`` (``inf`` = miss) and the shaded colour ``(M, 3)``.

    ``light_dir`` (towards the light) defaults to :data:`LIGHT_DIR`.
    """
    prims = fig.primitives()
    ts = torch.stack([prim.intersect(o, d) for prim, _ in prims])  # (parts, M)
    t, which = ts.min(0)
    colour = torch.zeros(o.shape[0], 3)
    light = torch.nn.functional.normalize(torch.tensor(light_dir or LIGHT_DIR, dtype=torch.float32), dim=0)
    for k, (prim, part) in enumerate(prims):
        sel = ((which == k) & torch.isfinite(t)).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        p = o[sel] + t[sel, None] * d[sel]
        n = prim.normal(p)
        n = torch.where(((n * d[sel]).sum(-1) > 0)[:, None], -n, n)  # face the camera
        shade = AMBIENT + (1 - AMBIENT) * (n @ light).clamp_min(0)
        colour[sel] = fig.albedo(part, p) * shade[:, None]
    return t, colour.clamp(0, 1)


def screen_box(fig: Figure, c2w: np.ndarray, intr: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel rectangle ``(x0, y0, x1, y1)`` (exclusive ends) that the figure can cover, ``None`` if off-screen."""
    lo, hi = fig.bbox()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    u, v, depth = (t.numpy() for t in project_points(c2w, intr, corners))
    h, w = hw
    if (depth < 1e-3).any():  # a corner at or behind the camera: the whole image is a safe bound
        return 0, 0, w, h
    x0, x1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.ceil(u.max())) + 1, w)
    y0, y1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.ceil(v.max())) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def insert_figures(
    image: np.ndarray,
    alpha: np.ndarray,
    depth: np.ndarray,
    figures: list[Figure],
    labels: list[int],
    c2w: np.ndarray,
    intr: np.ndarray,
    background: tuple[float, float, float],
    supersample: int = 3,
    light_dir: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``figures`` into one view.

    Args:
        image: ``(H, W, 3)`` float32, the scene composited on ``background``.
        alpha: ``(H, W)`` scene coverage in [0, 1] (1 = opaque content, 0 = background only).
        depth: ``(H, W)`` depth of the scene content along the camera -Z axis (``inf`` = none).
        labels: per figure, the mask value its pixels get (1..255).
        c2w, intr: the camera (OpenGL ``(4, 4)``, ``fx, fy, cx, cy``).
        light_dir: direction towards the light that shades the figures (the scene's, where known).
    Returns:
        the new image ``(H, W, 3)``, the label map ``(H, W)`` uint8 (0 = no figure; a pixel at least half
        covered by visible figures takes the label of the one covering most of it), and the visible
        figure coverage ``(H, W)`` float32 in [0, 1].
    """
    h, w = image.shape[:2]
    out = image.astype(np.float32).copy()
    label = np.zeros((h, w), np.uint8)
    cover = np.zeros((h, w), np.float32)
    boxes = [screen_box(f, c2w, intr, (h, w)) for f in figures]
    live = [i for i, b in enumerate(boxes) if b is not None]
    if not live:
        return out, label, cover
    x0 = min(boxes[i][0] for i in live)
    y0 = min(boxes[i][1] for i in live)
    x1 = max(boxes[i][2] for i in live)
    y1 = max(boxes[i][3] for i in live)
    ss = int(supersample)
    bh, bw, n = y1 - y0, x1 - x0, ss * ss
    z_fig = np.full((bh, bw, n), np.inf, np.float32)  # camera depth of each sub-ray's nearest figure hit
    colour = np.zeros((bh, bw, n, 3), np.float32)
    fi = np.full((bh, bw, n), -1, np.int64)
    off = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss - 0.5
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    cam, k_t = torch.from_numpy(c2w).float(), torch.from_numpy(np.asarray(intr)).float()
    # each figure is traced only inside its own screen box; overlaps keep the nearest hit per sub-ray
    for k, i in enumerate(live):
        fx0, fy0, fx1, fy1 = boxes[i]
        vv, uu = torch.meshgrid(torch.arange(fy0, fy1), torch.arange(fx0, fx1), indexing="ij")
        us = (uu.reshape(-1, 1).float() + ox.reshape(1, -1)).reshape(-1)
        vs = (vv.reshape(-1, 1).float() + oy.reshape(1, -1)).reshape(-1)
        o, d, zscale = rays_from_pixels(cam, k_t, us, vs)
        t, col = trace_figure(figures[i], o, d, light_dir)
        z = (t / zscale).reshape(fy1 - fy0, fx1 - fx0, n).numpy()
        region = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
        closer = z < z_fig[region]
        z_fig[region] = np.where(closer, z, z_fig[region])
        colour[region] = np.where(closer[..., None], col.reshape(fy1 - fy0, fx1 - fx0, n, 3).numpy(), colour[region])
        fi[region] = np.where(closer, k, fi[region])
    hit = np.isfinite(z_fig)
    scene_z = depth[y0:y1, x0:x1][..., None]
    a = alpha[y0:y1, x0:x1][..., None].astype(np.float32)
    front = hit & (z_fig < scene_z)
    behind = hit & ~front
    base = out[y0:y1, x0:x1]
    bg = np.asarray(background, np.float32)
    # per sub-ray: in front -> figure; behind -> scene on top, figure only through the background share
    contrib = np.where(front[..., None], colour, base[:, :, None, :])
    contrib = np.where(behind[..., None], base[:, :, None, :] + (1 - a[..., None]) * (colour - bg), contrib)
    out[y0:y1, x0:x1] = contrib.mean(2)
    visible = front.astype(np.float32) + behind * (1 - a)  # (bh, bw, n)
    cover[y0:y1, x0:x1] = visible.mean(-1)
    shares = np.stack([(visible * (fi == k)).mean(-1) for k in range(len(live))])  # (figures, bh, bw)
    owner = np.asarray([labels[i] for i in live], np.uint8)[shares.argmax(0)]
    best_label = np.where(cover[y0:y1, x0:x1] >= 0.5, owner, np.uint8(0))
    label[y0:y1, x0:x1] = best_label
    return np.clip(out, 0, 1), label, cover
