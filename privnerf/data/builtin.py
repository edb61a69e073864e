"""The embedded default scene: a seeded, procedurally textured toy world rendered by our own ray tracer.

No downloads and no external renderer: every view is produced here by analytic ray tracing in torch
(vectorised over all rays of a batch of views), deterministically from an integer ``seed``.

The scene
---------
* **Ground**: a finite disk of radius :data:`GROUND_RADIUS` (1.4) in the plane ``z = 0`` (world up is +Z, as in
  Blender), tiled with noisy-coloured square tiles, grout lines, wood-like grain and a dark rim band.
* **Objects**: 4 to 6 objects of *distinct* semantic classes drawn from :data:`CLASS_CATALOG`, placed on the
  disk from the seed without overlapping, each a simple analytic primitive or a union of primitives:

  ======== ================================================ ==============================================
  class    geometry                                         texture
  ======== ================================================ ==============================================
  ball     sphere resting on the ground                     polka dots (the one **specular** material)
  crate    box rotated about +Z                             3-D checker with grain
  pillar   plinth + shaft + capital (capped cylinders)      marble veins
  tree     cone of foliage on a cylinder trunk              fBm foliage with speckles / wood grain
  arch     two box posts and a box lintel                   bricks with mortar, per-brick colour
  table    box top on four box legs                         gingham cloth top / wood legs
  cone     traffic cone (cone on a square base box)         horizontal orange/white bands
  ======== ================================================ ==============================================

  Colours, sizes, yaw angles, positions, the texture noise and the light direction all come from the seed.
* **Shading**: Lambertian with one directional light, a hemispherical ambient term and hard shadows (a shadow
  ray is traced against all objects), plus a Blinn-Phong highlight on the ball so that the scene has some
  view-dependent appearance. Rays that miss everything get the constant background :data:`BACKGROUND`
  (white), recorded in :attr:`Scene.background`.

Cameras
-------
Pinhole, square ``size`` x ``size`` images with a 40 degree field of view, all at distance
:data:`CAMERA_RADIUS` from :data:`LOOK_AT` and looking at it with +Z up. Train views cover the hemisphere band
of elevation 10-70 degrees on a jittered Fibonacci spiral; val and test views sit on a ring of elevation 30
degrees at azimuths interleaved with each other, so they are novel views. The objects depend on the seed
only; the cameras of each split are fixed per seed.

Per view the scene holds the anti-aliased RGB (``supersample``\\ :sup:`2` regular sub-pixel samples averaged)
and, from the pixel-centre ray, the metric depth along the camera -Z axis (``inf`` on background), the
semantic class id and the instance id (both int32; 0 = background, 1 = ground, then the objects).
``meta["classes"]`` names the class ids, ``meta["instances"]`` describes every instance (ground included).

Geometry ground truth: :func:`builtin_box` (the scene box), :func:`builtin_sdf` (signed distance to the
objects and the ground) and :func:`sample_builtin_surface` (exact area-uniform samples of the visible surface
with outward normals, for :mod:`privnerf.eval.mesh`).

Generating the default scene (60 + 8 + 8 views at 100 px, supersample 2) takes a few seconds on two CPU
cores; the result is cached per process, so the train, val and test calls share one render.
:func:`export_builtin` writes every split (with semantic and instance maps) as a nerfstudio dataset.
"""

from __future__ import annotations

import colorsys
import copy
import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.errors import SceneError
from privnerf.data.primitives import (
    INF,
    Box,
    Cone,
    Cylinder,
    Disk,
    Primitive,
    Sphere,
    rot_to_local,
)
from privnerf.data.scene import Scene

CLASS_CATALOG = ("ball", "crate", "pillar", "tree", "arch", "table", "cone")
"""Every object class the generator can place; a scene uses 4-6 of them, each at most once."""

GROUND_RADIUS = 1.4
CAMERA_RADIUS = 4.0
FOV_DEG = 40.0
LOOK_AT = (0.0, 0.0, 0.25)
BACKGROUND = (1.0, 1.0, 1.0)
SPLITS = ("train", "val", "test")

_AMBIENT = 0.32
_DIFFUSE = 0.78
_CHUNK_RAYS = 1 << 18


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _frac(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


def hsv_colour(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV in [0, 1] (hue wraps) to an RGB tuple."""
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


# ----------------------------------------------------------------------------------------------------------
# procedural textures. Every material maps object-local points p (M, 3) and normals n (M, 3) to albedo (M, 3).


class _Noise:
    """Seeded 3-D value noise (trilinear, smoothstep-faded) on an integer lattice hashed by a permutation."""

    def __init__(self, rng: np.random.Generator):
        perm = rng.permutation(256)
        self.perm = torch.tensor(np.concatenate([perm, perm]), dtype=torch.long)
        self.vals = torch.tensor(rng.random(256), dtype=torch.float32)

    def cell(self, ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor) -> torch.Tensor:
        """A pseudo-random value in [0, 1] per integer lattice cell (long tensors of one shape)."""
        p = self.perm
        return self.vals[p[p[p[ix & 255] + (iy & 255)] + (iz & 255)]]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth noise in [0, 1] at points ``(M, 3)``; returns ``(M,)``."""
        fl = torch.floor(x)
        f = x - fl
        w = f * f * (3.0 - 2.0 * f)
        i = fl.long()
        out = torch.zeros(x.shape[0])
        for dx in (0, 1):
            wx = w[:, 0] if dx else 1 - w[:, 0]
            for dy in (0, 1):
                wy = w[:, 1] if dy else 1 - w[:, 1]
                for dz in (0, 1):
                    wz = w[:, 2] if dz else 1 - w[:, 2]
                    out += wx * wy * wz * self.cell(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
        return out

    def fbm(self, x: torch.Tensor, octaves: int = 4) -> torch.Tensor:
        """Fractal sum of ``octaves`` noise layers, normalised to [0, 1]; ``(M, 3) -> (M,)``."""
        total, amp, norm = torch.zeros(x.shape[0]), 1.0, 0.0
        for o in range(octaves):
            total += amp * self.value(x * (2.0**o) + 17.31 * o)
            norm += amp
            amp *= 0.5
        return total / norm


def _col(c) -> torch.Tensor:
    return c if torch.is_tensor(c) else torch.tensor(c, dtype=torch.float32)


def _mix(a, b, t: torch.Tensor) -> torch.Tensor:
    """Per-point blend ``a + (b - a) t`` of colours ``(3,)`` (or ``(M, 3)``) with weights ``t`` ``(M,)``."""
    a, b = _col(a), _col(b)
    return a + (b - a) * t[:, None]


def _tex_ground(p, n, m, nz):
    s = m["tiles"]
    ix, iy = torch.floor(p[:, 0] * s).long(), torch.floor(p[:, 1] * s).long()
    var = nz.cell(ix, iy, torch.full_like(ix, 7))
    par = ((ix + iy) & 1).float()
    col = _mix(m["c1"], m["c2"], par) * (0.8 + 0.4 * var)[:, None]
    col = col * (0.8 + 0.4 * nz.fbm(p * 9.0, 3))[:, None]
    fx, fy = _frac(p[:, 0] * s), _frac(p[:, 1] * s)
    grout = torch.minimum(torch.minimum(fx, 1 - fx), torch.minimum(fy, 1 - fy)) < 0.05
    col = torch.where(grout[:, None], _col(m["grout"]), col)
    rho = p[:, :2].norm(dim=-1)
    rim = (rho > m["radius"] - 0.09) & (rho < m["radius"] - 0.03)
    return torch.where(rim[:, None], _col(m["rim"]), col)


def _tex_checker(p, n, m, nz):
    q = torch.floor(p * m["scale"] + torch.tensor([0.013, 0.029, 0.047])).long().sum(-1)
    col = _mix(m["c1"], m["c2"], (q & 1).float())
    return col * (0.85 + 0.3 * nz.fbm(p * 14.0, 3))[:, None]


def _tex_dots(p, n, m, nz):
    q = torch.nn.functional.normalize(p - _col(m["centre"]), dim=-1)
    theta = torch.acos(q[:, 2].clamp(-1, 1))
    phi = torch.atan2(q[:, 1], q[:, 0])
    rows = m["rows"]
    vr = theta / math.pi * rows
    row = torch.floor(vr)
    na = torch.round(m["around"] * torch.sin((row + 0.5) / rows * math.pi)).clamp_min(1)
    ua = (phi / (2 * math.pi) + 0.5) * na + 0.5 * (row % 2)
    du = (_frac(ua) - 0.5) * (2 * math.pi / na) * torch.sin(theta)
    dv = (_frac(vr) - 0.5) * (math.pi / rows)
    dot = (du * du + dv * dv).sqrt() < m["dot"] * math.pi / rows
    return torch.where(dot[:, None], _col(m["c2"]), _col(m["c1"]).expand(p.shape[0], 3))


def _tex_marble(p, n, m, nz):
    t = m["freq"] * (p[:, 0] + 0.6 * p[:, 1] + 0.9 * p[:, 2]) + 6.0 * nz.fbm(p * 3.0, 4)
    vein = (1.0 - torch.sin(t).abs()) ** 6
    col = _mix(m["c1"], m["c2"], 0.85 * vein)
    return col * (0.92 + 0.16 * nz.fbm(p * 20.0, 2))[:, None]


def _tex_foliage(p, n, m, nz):
    col = _mix(m["c1"], m["c2"], nz.fbm(p * 7.0, 4))
    speck = nz.value(p * 32.0) > 0.78
    return torch.where(speck[:, None], _col(m["c3"]), col)


def _tex_wood(p, n, m, nz):
    g = nz.fbm(p * torch.tensor([14.0, 14.0, 1.5]), 3)
    g = 0.5 + 0.5 * torch.sin(25.0 * g)
    return _mix(m["c1"], m["c2"], g)


def _tex_brick(p, n, m, nz):
    bw, bh = m["brick"]
    vz = p[:, 2] / bh
    row = torch.floor(vz)
    u = (p[:, 0] + p[:, 1]) / bw + 0.5 * (row % 2)
    col_i = torch.floor(u)
    var = nz.cell(col_i.long(), row.long(), torch.full_like(row, 3).long())
    col = _col(m["c1"]) * (0.75 + 0.4 * var)[:, None]
    mortar = (_frac(vz) < 0.14) | (_frac(u) < 0.07)
    return torch.where(mortar[:, None], _col(m["mortar"]), col)


def _tex_gingham(p, n, m, nz):
    k = m["scale"]
    a = (torch.floor(p[:, 0] * k + 0.01).long() & 1).float()
    b = (torch.floor(p[:, 1] * k + 0.01).long() & 1).float()
    return _mix(m["c1"], m["c2"], 0.5 * (a + b))


def _tex_bands(p, n, m, nz):
    band = (torch.floor(p[:, 2] * m["freq"]).long() & 1).float()
    col = _mix(m["c1"], m["c2"], band)
    return col * (0.9 + 0.2 * nz.fbm(p * 18.0, 2))[:, None]


def _tex_plain(p, n, m, nz):
    return _col(m["c1"]) * (0.8 + 0.4 * nz.fbm(p * 10.0, 3))[:, None]


_TEXTURES: dict[str, Callable] = {
    "ground": _tex_ground, "checker": _tex_checker, "dots": _tex_dots, "marble": _tex_marble,
    "foliage": _tex_foliage, "wood": _tex_wood, "brick": _tex_brick, "gingham": _tex_gingham,
    "bands": _tex_bands, "plain": _tex_plain,
}


# ----------------------------------------------------------------------------------------------------------
# objects and the world


@dataclass
class _Object:
    """One instance: parts in world coordinates plus its local frame (translation in xy, yaw about +Z)."""

    inst_id: int
    class_name: str
    class_id: int
    xy: tuple[float, float]
    yaw: float
    footprint: float
    prims: list[Primitive] = field(default_factory=list)
    bound: tuple[torch.Tensor, float] | None = None  # bounding sphere (centre, radius); None: test all rays

    def to_local(self, p: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([self.xy[0], self.xy[1], 0.0])
        return rot_to_local(p - t, math.cos(self.yaw), math.sin(self.yaw))

    def dir_to_local(self, v: torch.Tensor) -> torch.Tensor:
        return rot_to_local(v, math.cos(self.yaw), math.sin(self.yaw))

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bbox() for p in self.prims]
        return np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0)


@dataclass
class _World:
    objects: list[_Object]  # objects[0] is the ground
    prims: list[Primitive]
    noise: _Noise
    light: torch.Tensor  # (3,) unit direction towards the light
    classes: list[str]

    def lut(self, attr: str) -> torch.Tensor:
        """``(P + 1,)`` int32 table mapping ``prim index + 1`` to an object attribute (0 for a miss)."""
        return torch.tensor([0] + [getattr(p.obj, attr) for p in self.prims], dtype=torch.int32)


def _local_part(kind: str, material: dict, **g) -> tuple[str, dict, dict]:
    return kind, material, g


def _build_object(cls: str, rng: np.random.Generator) -> tuple[list, float]:
    """Parts of one object in its local frame (origin on the ground, yaw 0) and its footprint radius."""
    hue = rng.random()

    def colour(h=None, s=(0.55, 0.85), v=(0.6, 0.9)):
        return hsv_colour(hue if h is None else h % 1.0, rng.uniform(*s), rng.uniform(*v))

    if cls == "ball":
        r = rng.uniform(0.24, 0.3)
        mat = {"kind": "dots", "c1": colour(), "c2": colour(hue + 0.5, (0.1, 0.3), (0.85, 0.95)),
               "centre": (0.0, 0.0, r), "rows": int(rng.integers(6, 9)), "around": int(rng.integers(10, 15)),
               "dot": 0.3, "specular": 0.5, "shininess": 48.0}
        return [_local_part("sphere", mat, centre=(0.0, 0.0, r), radius=r)], r
    if cls == "crate":
        a, b, c = rng.uniform(0.17, 0.25), rng.uniform(0.17, 0.25), rng.uniform(0.15, 0.24)
        mat = {"kind": "checker", "c1": colour(), "c2": colour(hue + 0.12, (0.2, 0.5), (0.75, 0.9)),
               "scale": rng.uniform(9.0, 12.0)}
        return [_local_part("box", mat, centre=(0.0, 0.0, c), half=(a, b, c))], math.hypot(a, b)
    if cls == "pillar":
        r, h = rng.uniform(0.1, 0.14), rng.uniform(0.7, 0.95)
        mat = {"kind": "marble", "c1": colour(s=(0.05, 0.2), v=(0.82, 0.92)), "c2": colour(hue + 0.5, (0.3, 0.6), (0.25, 0.45)),
               "freq": rng.uniform(5.0, 8.0)}
        parts = [
            _local_part("cylinder", mat, radius=r + 0.045, z0=0.0, z1=0.06),
            _local_part("cylinder", mat, radius=r, z0=0.06, z1=h - 0.06),
            _local_part("cylinder", mat, radius=r + 0.045, z0=h - 0.06, z1=h),
        ]
        return parts, r + 0.045
    if cls == "tree":
        r, h = rng.uniform(0.23, 0.29), rng.uniform(0.5, 0.68)
        leaves = {"kind": "foliage", "c1": hsv_colour(rng.uniform(0.27, 0.36), 0.75, 0.3),
                  "c2": hsv_colour(rng.uniform(0.22, 0.3), 0.7, 0.65), "c3": hsv_colour(0.15, 0.6, 0.85)}
        bark = {"kind": "wood", "c1": hsv_colour(0.07, 0.6, 0.3), "c2": hsv_colour(0.08, 0.5, 0.5)}
        return [_local_part("cylinder", bark, radius=0.055, z0=0.0, z1=0.24),
                _local_part("cone", leaves, radius=r, z0=0.18, height=h)], r
    if cls == "arch":
        w, hp = rng.uniform(0.2, 0.27), rng.uniform(0.42, 0.55)
        mat = {"kind": "brick", "c1": colour(rng.uniform(0.0, 0.08), (0.55, 0.75), (0.55, 0.75)),
               "mortar": (0.82, 0.8, 0.76), "brick": (0.1, 0.045)}
        parts = [_local_part("box", mat, centre=(sx * w, 0.0, hp / 2), half=(0.06, 0.07, hp / 2)) for sx in (-1, 1)]
        parts.append(_local_part("box", mat, centre=(0.0, 0.0, hp + 0.05), half=(w + 0.1, 0.08, 0.05)))
        return parts, math.hypot(w + 0.1, 0.08)
    if cls == "table":
        tx, ty, ht = rng.uniform(0.25, 0.3), rng.uniform(0.17, 0.21), rng.uniform(0.36, 0.44)
        cloth = {"kind": "gingham", "c1": (0.95, 0.95, 0.92), "c2": colour(s=(0.7, 0.9), v=(0.55, 0.75)),
                 "scale": rng.uniform(16.0, 22.0)}
        legs = {"kind": "wood", "c1": hsv_colour(0.07, 0.6, 0.28), "c2": hsv_colour(0.09, 0.5, 0.5)}
        parts = [_local_part("box", cloth, centre=(0.0, 0.0, ht), half=(tx, ty, 0.025))]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_local_part("box", legs, centre=(sx * (tx - 0.045), sy * (ty - 0.045), (ht - 0.025) / 2),
                                         half=(0.022, 0.022, (ht - 0.025) / 2)))
        return parts, math.hypot(tx, ty)
    if cls == "cone":
        h = rng.uniform(0.38, 0.48)
        bands = {"kind": "bands", "c1": hsv_colour(rng.uniform(0.03, 0.08), 0.9, 0.95), "c2": (0.95, 0.95, 0.95),
                 "freq": 1.0 / 0.075}
        base = {"kind": "plain", "c1": (0.18, 0.18, 0.2)}
        return [_local_part("box", base, centre=(0.0, 0.0, 0.02), half=(0.16, 0.16, 0.02)),
                _local_part("cone", bands, radius=0.125, z0=0.04, height=h)], 0.16 * math.sqrt(2)
    raise ValueError(cls)


def _place(parts: list, xy: tuple[float, float], yaw: float) -> list[Primitive]:
    """Instantiate local parts at a world position and yaw."""
    cs, sn = math.cos(yaw), math.sin(yaw)

    def tr(x, y):
        return xy[0] + cs * x - sn * y, xy[1] + sn * x + cs * y

    prims: list[Primitive] = []
    for kind, mat, g in parts:
        if kind == "sphere":
            x, y = tr(*g["centre"][:2])
            prim: Primitive = Sphere((x, y, g["centre"][2]), g["radius"])
        elif kind == "box":
            x, y = tr(*g["centre"][:2])
            prim = Box((x, y, g["centre"][2]), g["half"], yaw)
        elif kind == "cylinder":
            x, y = tr(0.0, 0.0)
            prim = Cylinder(x, y, g["radius"], g["z0"], g["z1"])
        elif kind == "cone":
            x, y = tr(0.0, 0.0)
            prim = Cone(x, y, g["radius"], g["z0"], g["height"])
        else:
            raise ValueError(kind)
        prim.material = mat
        prims.append(prim)
    return prims


def _make_world(seed: int) -> _World:
    """The seeded content: ground, 4-6 non-overlapping objects of distinct classes, noise and light."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    n_obj = int(rng.integers(4, 7))
    chosen = [CLASS_CATALOG[i] for i in rng.choice(len(CLASS_CATALOG), n_obj, replace=False)]
    built = [_build_object(c, rng) for c in chosen]
    # rejection sampling of positions inside the disk, without overlaps (restart, then shrink the margin)
    margin = 0.1
    for attempt in range(200):
        centres: list[tuple[float, float]] = []
        for _, foot in built:
            rmax = GROUND_RADIUS - 0.12 - foot
            for _ in range(200):
                rr, th = rmax * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
                x, y = rr * math.cos(th), rr * math.sin(th)
                if all(math.hypot(x - cx, y - cy) > foot + f2 + margin for (cx, cy), (_, f2) in zip(centres, built)):
                    centres.append((x, y))
                    break
            else:
                break
        if len(centres) == n_obj:
            break
        if attempt % 20 == 19:
            margin *= 0.7
    else:  # pragma: no cover - never observed
        raise RuntimeError(f"builtin scene: could not place objects for seed {seed}")

    present = [c for c in CLASS_CATALOG if c in chosen]
    classes = ["background", "ground", *present]
    ground = _Object(1, "ground", 1, (0.0, 0.0), 0.0, GROUND_RADIUS)
    disk = Disk(GROUND_RADIUS)
    g_hue = rng.uniform(0.05, 0.14)
    disk.material = {"kind": "ground", "tiles": 1.0 / rng.uniform(0.17, 0.22), "radius": GROUND_RADIUS,
                     "c1": hsv_colour(g_hue, rng.uniform(0.2, 0.4), 0.72), "c2": hsv_colour(g_hue + 0.03, rng.uniform(0.3, 0.5), 0.52),
                     "grout": (0.35, 0.33, 0.3), "rim": (0.2, 0.22, 0.28)}
    ground.prims = [disk]
    objects = [ground]
    for k, ((parts, foot), cls, xy) in enumerate(zip(built, chosen, centres)):
        yaw = float(rng.uniform(0, 2 * math.pi))
        obj = _Object(2 + k, cls, classes.index(cls), xy, yaw, foot, _place(parts, xy, yaw))
        lo, hi = obj.bbox()
        obj.bound = (torch.tensor((lo + hi) / 2, dtype=torch.float32), float(np.linalg.norm(hi - lo) / 2) + 1e-3)
        objects.append(obj)
    prims: list[Primitive] = []
    for obj in objects:
        for p in obj.prims:
            p.obj, p.index = obj, len(prims)
            prims.append(p)
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(45, 62))
    light = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float32)
    return _World(objects, prims, _Noise(rng), light, classes)


# ----------------------------------------------------------------------------------------------------------
# tracing and shading


def _trace(o: torch.Tensor, d: torch.Tensor, objects: list[_Object]) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest hit of unit rays ``o, d`` ``(M, 3)`` against ``objects``.

    Returns ``t`` ``(M,)`` (``inf`` on a miss) and the hit primitive index ``(M,)`` long (-1 on a miss).
    Objects with a bounding sphere only test the rays that enter it before the current closest hit.
    """
    t_best = torch.full((o.shape[0],), INF)
    pid = torch.full((o.shape[0],), -1, dtype=torch.long)
    for obj in objects:
        if obj.bound is None:
            idx, oo, dd = None, o, d
            tb, pb = t_best, pid
        else:
            bc, br = obj.bound
            oc = o - bc
            b = (oc * d).sum(-1)
            disc = b * b - ((oc * oc).sum(-1) - br * br)
            sq = disc.clamp_min(0).sqrt()
            idx = ((disc >= 0) & (-b + sq > 0) & (-b - sq < t_best)).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            oo, dd, tb, pb = o[idx], d[idx], t_best[idx], pid[idx]
        for prim in obj.prims:
            t = prim.intersect(oo, dd)
            better = t < tb
            tb = torch.where(better, t, tb)
            pb = torch.where(better, prim.index, pb)
        if idx is None:
            t_best, pid = tb, pb
        else:
            t_best[idx], pid[idx] = tb, pb
    return t_best, pid


def _shade(o: torch.Tensor, d: torch.Tensor, world: _World) -> torch.Tensor:
    """Colour ``(M, 3)`` of unit rays ``o, d`` ``(M, 3)``: textured Lambert + shadows + ball highlight."""
    t, pid = _trace(o, d, world.objects)
    rgb = torch.tensor(BACKGROUND, dtype=torch.float32).expand(o.shape[0], 3).clone()
    hi = (pid >= 0).nonzero().squeeze(1)
    if hi.numel() == 0:
        return rgb
    dh = d[hi]
    p = o[hi] + t[hi, None] * dh
    ph = pid[hi]
    n = torch.zeros_like(p)
    albedo = torch.zeros_like(p)
    spec = torch.zeros(p.shape[0])
    shin = torch.ones(p.shape[0])
    for prim in world.prims:
        m = (ph == prim.index).nonzero().squeeze(1)
        if m.numel() == 0:
            continue
        pp = p[m]
        nn = prim.normal(pp)
        mat = prim.material
        albedo[m] = _TEXTURES[mat["kind"]](prim.obj.to_local(pp), prim.obj.dir_to_local(nn), mat, world.noise)
        n[m] = nn
        if mat.get("specular"):
            spec[m] = mat["specular"]
            shin[m] = mat["shininess"]
    n = torch.where(((n * dh).sum(-1) > 0)[:, None], -n, n)  # face the viewer
    ndl = (n @ world.light).clamp_min(0)
    vis = torch.zeros_like(ndl)
    li = (ndl > 0).nonzero().squeeze(1)
    if li.numel():
        so = p[li] + 2e-3 * n[li]
        _, spid = _trace(so, world.light.expand(li.numel(), 3), world.objects[1:])
        vis[li] = (spid < 0).float()
    amb = _AMBIENT * (0.8 + 0.2 * n[:, 2])
    col = albedo * (amb + _DIFFUSE * ndl * vis)[:, None]
    half = torch.nn.functional.normalize(world.light - dh, dim=-1)
    col = col + (spec * (n * half).sum(-1).clamp_min(0) ** shin * vis)[:, None]
    rgb[hi] = col.clamp(0.0, 1.0)
    return rgb


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(4, 4)`` OpenGL camera-to-world at ``eye`` looking at ``target`` with +Z up."""
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def _cameras(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, tuple[np.ndarray, list[dict]]]:
    """Per split: c2w ``(N, 4, 4)`` and per-view ``{azimuth_deg, elevation_deg}``."""
    rng = np.random.default_rng([int(seed), 0xCA3])
    az0 = rng.uniform(0, 360)
    target = np.array(LOOK_AT)
    golden = 180.0 * (3.0 - math.sqrt(5.0))
    lo, hi = math.sin(math.radians(10)), math.sin(math.radians(70))
    views = {"train": [], "val": [], "test": []}
    for i in range(n_train):  # jittered Fibonacci spiral, uniform in area over the band
        f = (i + 0.5 + rng.uniform(-0.3, 0.3)) / n_train
        el = math.degrees(math.asin(lo + (hi - lo) * f))
        views["train"].append((az0 + i * golden + rng.uniform(-4, 4), el))
    for k in range(n_val):
        views["val"].append((az0 + 360.0 * (k + 0.25) / n_val, 30.0))
    for k in range(n_test):
        views["test"].append((az0 + 360.0 * (k + 0.75) / n_test, 30.0))
    out = {}
    for split, vs in views.items():
        mats, meta = [], []
        for az, el in vs:
            a, e = math.radians(az), math.radians(el)
            eye = target + CAMERA_RADIUS * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
            mats.append(_look_at(eye, target))
            meta.append({"azimuth_deg": float(az % 360.0), "elevation_deg": float(el)})
        out[split] = (np.array(mats, dtype=np.float32).reshape(-1, 4, 4), meta)
    return out


def _render_views(world: _World, c2w: np.ndarray, intr: np.ndarray, size: int, ss: int):
    """Render N views: images ``(N, H, W, 3)`` float32, depths ``(N, H, W)`` float32, hit prim ``(N, H, W)``."""
    n = c2w.shape[0]
    v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    off = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss - 0.5  # sub-pixel offsets from the centre
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    us = (u[:, None].float() + ox.reshape(1, -1)).reshape(-1)  # (H*W*ss*ss,)
    vs = (v[:, None].float() + oy.reshape(1, -1)).reshape(-1)
    c2w_t, intr_t = torch.from_numpy(c2w), torch.from_numpy(intr)
    images = np.zeros((n, size, size, 3), np.float32)
    depths = np.zeros((n, size, size), np.float32)
    prim = np.zeros((n, size, size), np.int64)
    per_view = us.numel()
    step = max(1, _CHUNK_RAYS // per_view)
    for s in range(0, n, step):
        ids = range(s, min(n, s + step))
        o, d = zip(*[rays_from_pixels(c2w_t[i], intr_t[i], us, vs)[:2] for i in ids])
        rgb = _shade(torch.cat(o), torch.cat(d), world)
        images[s : s + len(ids)] = rgb.reshape(len(ids), size, size, ss * ss, 3).mean(3).numpy()
        o, d, zs = zip(*[rays_from_pixels(c2w_t[i], intr_t[i], u, v) for i in ids])
        t, pid = _trace(torch.cat(o), torch.cat(d), world.objects)
        depths[s : s + len(ids)] = (t / torch.cat(zs)).reshape(len(ids), size, size).numpy()
        prim[s : s + len(ids)] = pid.reshape(len(ids), size, size).numpy()
    return images, depths, prim


@functools.lru_cache(maxsize=4)
def _render_all(seed: int, size: int, n_train: int, n_val: int, n_test: int, supersample: int) -> dict[str, Scene]:
    """Render every split once; cached per process.

    Runs torch single-threaded: the renderer issues many medium-sized ops, and on a machine whose cores are
    shared with other busy processes OpenMP's spinning barriers made the 2-thread render 10-40x slower
    (3 s became 20-110 s), while one thread stays at ~3 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return _render_all_impl(seed, size, n_train, n_val, n_test, supersample)
    finally:
        torch.set_num_threads(threads)


def _render_all_impl(seed: int, size: int, n_train: int, n_val: int, n_test: int, supersample: int) -> dict[str, Scene]:
    world = _make_world(seed)
    cams = _cameras(seed, n_train, n_val, n_test)
    focal = 0.5 * size / math.tan(math.radians(FOV_DEG) / 2)
    aabb = _scene_aabb(world)
    corners = np.array([[x, y, z] for x in aabb[:, 0] for y in aabb[:, 1] for z in aabb[:, 2]])
    reach = float(np.linalg.norm(corners - np.array(LOOK_AT), axis=1).max())
    near, far = max(0.05, CAMERA_RADIUS - reach - 0.05), CAMERA_RADIUS + reach + 0.05
    sem_lut, inst_lut = world.lut("class_id").numpy(), world.lut("inst_id").numpy()
    instances = []
    for obj in world.objects:
        lo_o, hi_o = obj.bbox()
        kinds = [p.kind for p in obj.prims]
        instances.append({
            "id": obj.inst_id, "class_id": obj.class_id, "class": obj.class_name,
            "primitive": kinds[0] if len(kinds) == 1 else "union",
            "centre": [float(obj.xy[0]), float(obj.xy[1]), 0.0], "yaw": float(obj.yaw),
            "footprint_radius": float(obj.footprint),
            "bbox": [[float(x) for x in lo_o], [float(x) for x in hi_o]],
            "parts": [dict(p.describe(), material=p.material["kind"]) for p in obj.prims],
        })
    out = {}
    for split in SPLITS:
        c2w, vmeta = cams[split]
        n = c2w.shape[0]
        intr = np.tile(np.array([focal, focal, size / 2, size / 2], np.float32), (n, 1))
        if n:
            images, depths, prim = _render_views(world, c2w, intr, size, supersample)
        else:
            images = np.zeros((0, size, size, 3), np.float32)
            depths = np.zeros((0, size, size), np.float32)
            prim = np.zeros((0, size, size), np.int64)
        out[split] = Scene(
            images=list(images), c2w=c2w, intrinsics=intr, near=near, far=far, aabb=aabb,
            scene_type="bounded", background=BACKGROUND,
            names=[f"{split}_{i:04d}" for i in range(n)],
            depths=list(depths),
            semantics=[sem_lut[p + 1] for p in prim],
            instances=[inst_lut[p + 1] for p in prim],
            frame_meta=[dict(m, split=split) for m in vmeta],
            meta={
                "source": "builtin", "split": split, "seed": seed, "classes": list(world.classes),
                "instances": instances, "light_dir": world.light.tolist(), "ground_radius": GROUND_RADIUS,
                "camera_radius": CAMERA_RADIUS, "look_at": list(LOOK_AT), "fov_deg": FOV_DEG,
                "size": size, "supersample": supersample,
                "counts": {"train": n_train, "val": n_val, "test": n_test},
            },
        )
    return out


def _scene_aabb(world: _World) -> np.ndarray:
    """``(2, 3)`` float32 scene box: the bounding box of the ground and every object, grown by 0.05."""
    lo = np.min([o.bbox()[0] for o in world.objects], 0) - 0.05
    hi = np.max([o.bbox()[1] for o in world.objects], 0) + 0.05
    return np.stack([lo, hi]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# geometry ground truth


@functools.lru_cache(maxsize=4)
def _geometry_world(scene_seed: int) -> _World:
    """The seeded world for the geometry functions below (cached: they only read it)."""
    return _make_world(scene_seed)


def builtin_box(scene_seed: int = 0) -> np.ndarray:
    """The built-in scene's box ``(2, 3)`` float32 (world coordinates), the ``aabb`` of its :class:`Scene`.

    Geometry metrics on this scene measure distances against its diagonal,
    ``np.linalg.norm(box[1] - box[0])`` (4.23 for seed 0: the 2.8 wide ground disk and the objects' height,
    plus 0.05 on every side).
    """
    return _scene_aabb(_geometry_world(int(scene_seed)))


def builtin_sdf(points, scene_seed: int = 0, ground_thickness: float = 0.0):
    """Signed distance from points to the built-in scene's geometry (negative inside an object).

    The union of the objects' analytic primitives and the ground, as the minimum of their exact signed
    distances: exact outside the objects; inside, of the right sign and at most the true depth. With ``ground_thickness``
    0 the ground is the zero-thickness disk the renderer traces, so the value near it is its *unsigned*
    distance (>= 0; a level set extraction will not find it); a positive thickness makes the ground a
    solid slab ``z in [-ground_thickness, 0]`` of the disk's radius, a closed surface that marching cubes
    can extract (give it a few voxels of thickness).

    Args:
        points: ``(n, 3)`` world points, a tensor or an array.
        scene_seed: the scene's seed (``make_builtin_scene(seed=...)``).
        ground_thickness: see above.
    Returns:
        ``(n,)`` distances: a tensor of ``points``' float dtype, or a numpy array if ``points`` was not a
        tensor. Example: just under the ground's centre, ``builtin_sdf(np.array([[0.0, 0.0, -0.01]]))`` is
        ``[0.01]``, and ``[-0.01]`` with ``ground_thickness=0.05``.
    """
    world = _geometry_world(int(scene_seed))
    as_numpy = not torch.is_tensor(points)
    p = torch.as_tensor(np.asarray(points) if as_numpy else points)
    if not p.is_floating_point():
        p = p.double()
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"builtin_sdf: points must be (n, 3), got {tuple(p.shape)}")
    if ground_thickness > 0:
        d = Cylinder(0.0, 0.0, GROUND_RADIUS, -float(ground_thickness), 0.0).sdf(p)
    else:
        d = Disk(GROUND_RADIUS).sdf(p)
    for prim in world.prims:
        if not isinstance(prim, Disk):
            d = torch.minimum(d, prim.sdf(p))
    return d.numpy() if as_numpy else d


_VISIBILITY_EPS = 1e-5
"""How far off the surface (along the normal) a sample is tested for lying inside another primitive."""


def _visible(world: _World, prim_index: np.ndarray, pts: np.ndarray, nrm: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: whether surface samples of primitives ``prim_index`` ``(n,)`` are on the scene's outer
    surface, i.e. the point just outside (``pts + eps * nrm``) is inside no other primitive and not under
    the ground (the space below the disk is never seen: its cameras are all above it)."""
    q = torch.from_numpy(pts + _VISIBILITY_EPS * nrm)
    own = torch.from_numpy(prim_index)
    hidden = (q[:, 2] < 0) & (torch.hypot(q[:, 0], q[:, 1]) <= GROUND_RADIUS)
    for prim in world.prims:
        if isinstance(prim, Disk):
            continue
        hidden |= (prim.sdf(q) < 0) & (own != prim.index)
    return (~hidden).numpy()


def sample_builtin_surface(n_points: int, seed: int = 0, scene_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact, area-uniform samples of the built-in scene's visible outer surface, with outward normals.

    The surface is that of the union of the scene's analytic primitives: every primitive's surface minus
    the parts inside another primitive (a tree trunk inside its foliage cone, the top of a post under the
    arch's lintel), and minus what faces the ground from on it (objects' bottoms, the ground under them).
    The ground is its disk's upper face. Samples are drawn on all primitives in proportion to their area and
    the hidden ones rejected, so the kept ones are uniform over the visible area.

    Args:
        n_points: number of samples.
        seed: seed of the sampling.
        scene_seed: the scene's seed (``make_builtin_scene(seed=...)``).
    Returns:
        ``points`` ``(n_points, 3)`` and unit ``normals`` ``(n_points, 3)``, float64, in world coordinates
        (the cameras' frame). Example: the ground's normals are ``(0, 0, 1)`` and its points have ``z = 0``;
        ``builtin_sdf(points)`` is 0 up to rounding at every sample.
    """
    n_points = int(n_points)
    if n_points < 1:
        raise ValueError(f"sample_builtin_surface: n_points must be >= 1, got {n_points}")
    world = _geometry_world(int(scene_seed))
    rng = np.random.default_rng([int(seed), 0x5A3F])
    areas = np.array([p.area() for p in world.prims])
    probs = areas / areas.sum()
    kept_pts, kept_nrm, have, rate = [], [], 0, 1.0
    while have < n_points:
        m = int((n_points - have) / max(rate, 0.05) * 1.1) + 64
        which = rng.choice(len(world.prims), size=m, p=probs)
        pts, nrm = np.zeros((m, 3)), np.zeros((m, 3))
        for prim in world.prims:
            sel = which == prim.index
            if sel.any():
                pts[sel], nrm[sel] = prim.sample_surface(int(sel.sum()), rng)
        ok = _visible(world, which, pts, nrm)
        rate = max(float(ok.mean()), 1e-3)
        kept_pts.append(pts[ok])
        kept_nrm.append(nrm[ok])
        have += int(ok.sum())
    # the order of the draws is random, so the first n_points kept ones are a uniform sample
    return np.concatenate(kept_pts)[:n_points], np.concatenate(kept_nrm)[:n_points]


def _copy_scene(scene: Scene) -> Scene:
    """A copy whose arrays and metadata can be modified without touching the cache."""
    def cp(xs):
        return None if xs is None else [x.copy() for x in xs]

    return replace(scene, images=cp(scene.images), c2w=scene.c2w.copy(), intrinsics=scene.intrinsics.copy(),
                   aabb=scene.aabb.copy(), names=list(scene.names), masks=cp(scene.masks),
                   depths=cp(scene.depths), semantics=cp(scene.semantics), instances=cp(scene.instances),
                   frame_meta=copy.deepcopy(scene.frame_meta), meta=copy.deepcopy(scene.meta))


_OPTIONS = ("seed", "size", "n_train", "n_val", "n_test", "supersample")


def make_builtin_scene(
    split: str = "train",
    seed: int = 0,
    size: int = 100,
    n_train: int = 60,
    n_val: int = 8,
    n_test: int = 8,
    supersample: int = 2,
    **unused: Any,
) -> Scene:
    """One split of the built-in scene (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: content and camera seed; the objects depend on it only, not on the split or the view counts.
        size: image height and width in pixels.
        n_train, n_val, n_test: number of views of each split (all splits are rendered and cached together).
        supersample: anti-aliasing; ``supersample**2`` regular sub-pixel samples are averaged per pixel.
    Returns:
        A :class:`Scene` with ``images`` ``(size, size, 3)`` float32, ``depths`` ``(size, size)`` float32
        (camera z-depth, ``inf`` on background), ``semantics`` and ``instances`` ``(size, size)`` int32, and
        ``meta`` holding ``classes``, ``instances``, ``seed``, ``source="builtin"`` and ``split``. The arrays
        are fresh copies; modifying them does not affect later calls.
    Raises:
        SceneError: for an unknown option, an unknown split or an out-of-range value.
    """
    if unused:
        bad = ", ".join(sorted(unused))
        raise SceneError("builtin", f"unknown option {bad}; expected some of {', '.join(_OPTIONS)}")
    if split not in SPLITS:
        raise SceneError("builtin", f"unknown split {split!r}; expected one of {SPLITS}")
    vals = {"seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "supersample": supersample}
    for key, val in vals.items():
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise SceneError("builtin", f"option {key} must be an integer, got {val!r}")
    limits = {"size": (4, 2048), "n_train": (1, 10000), "n_val": (0, 10000), "n_test": (0, 10000), "supersample": (1, 8)}
    for key, (lo, hi) in limits.items():
        if not lo <= int(vals[key]) <= hi:
            raise SceneError("builtin", f"option {key}={vals[key]} out of range [{lo}, {hi}]")
    scenes = _render_all(*(int(vals[k]) for k in _OPTIONS))
    return _copy_scene(scenes[split])


def export_builtin(
    out_dir: str | Path,
    seed: int = 0,
    size: int = 100,
    n_train: int = 60,
    n_val: int = 8,
    n_test: int = 8,
    supersample: int = 2,
    image_format: str = "png",
) -> Path:
    """Write all splits of the built-in scene as one nerfstudio dataset in ``out_dir``.

    Images, depths (16-bit millimetre PNGs), cameras, bounds, per-split ``{split}_filenames`` lists and
    ``frame_meta`` go through :func:`privnerf.data.nerfstudio.write_nerfstudio` (which builds ``out_dir``
    atomically and refuses a non-empty folder that holds no ``transforms.json``). The semantic and instance
    maps are then written here as 16-bit grey PNGs ``semantics/{split}_{i:05d}.png`` and
    ``instances/{split}_{i:05d}.png`` (same stems as the images), referenced per frame in ``transforms.json``
    as ``semantic_path`` / ``instance_path``; ``load_nerfstudio`` keeps those keys in ``frame_meta``. The class
    names and instances are written to ``out_dir/builtin_meta.json``. Splits with no views are skipped.

    Returns:
        The path of the written ``transforms.json``.
    """
    from privnerf.data.io import atomic_write_json, write_image
    from privnerf.data.nerfstudio import write_nerfstudio

    out = Path(out_dir)
    kw = dict(seed=seed, size=size, n_train=n_train, n_val=n_val, n_test=n_test, supersample=supersample)
    scenes: dict[str, Scene] = {}
    for split in SPLITS:
        sc = make_builtin_scene(split=split, **kw)  # a fresh copy: frame_meta may be edited
        if sc.num_views == 0:
            continue
        for i, fm in enumerate(sc.frame_meta):
            fm["semantic_path"] = f"semantics/{split}_{i:05d}.png"
            fm["instance_path"] = f"instances/{split}_{i:05d}.png"
        scenes[split] = sc
    path = write_nerfstudio(scenes, out, image_format=image_format)
    for sc in scenes.values():
        for i, fm in enumerate(sc.frame_meta):
            write_image(out / fm["semantic_path"], sc.semantics[i].astype(np.uint16))
            write_image(out / fm["instance_path"], sc.instances[i].astype(np.uint16))
    first = next(iter(scenes.values()))
    meta = {k: first.meta[k] for k in ("source", "seed", "classes", "instances", "light_dir", "size", "supersample", "counts")}
    atomic_write_json(out / "builtin_meta.json", meta)
    return path


def builtin_visibility(points, normals, c2w, intrinsics, hw: tuple[int, int], scene_seed: int = 0,
                       rel_tol: float = 1e-4) -> np.ndarray:
    """Exact visibility of surface points from cameras of the built-in scene.

    A point is visible from a camera when it projects inside the image, lies in front of the camera, faces it
    (``normal . (camera - point) > 0``) and the camera's ray towards it hits nothing before it (traced against
    the analytic primitives, with a tolerance of ``rel_tol`` times the distance).

    Args:
        points, normals: ``(n, 3)`` surface samples and their outward normals (e.g. from
            :func:`sample_builtin_surface`).
        c2w: ``(c, 4, 4)`` cameras; intrinsics: ``(c, 4)``; hw: image height and width.
        scene_seed: the scene's seed.
    Returns:
        ``(c, n)`` bool. Example: a ground point straight below a camera looking down is visible from it unless an
        object stands between them.
    """
    from privnerf.data.cameras import project_points

    world = _geometry_world(int(scene_seed))
    p = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    nrm = torch.as_tensor(np.asarray(normals), dtype=torch.float64)
    h, w = hw
    out = np.zeros((len(c2w), len(p)), dtype=bool)
    for c in range(len(c2w)):
        u, v, depth = project_points(c2w[c], intrinsics[c], p)
        o = torch.as_tensor(np.asarray(c2w[c])[:3, 3], dtype=torch.float64)
        to = p - o
        dist = to.norm(dim=-1)
        cand = (depth > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & ((nrm * -to).sum(-1) > 0)
        idx = cand.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        d = (to[idx] / dist[idx, None]).float()
        t, _ = _trace(o.float().expand(len(idx), 3).contiguous(), d, world.objects)
        out[c, idx.numpy()] = (t.double() >= dist[idx] * (1 - rel_tol) - 1e-4).numpy()
    return out
