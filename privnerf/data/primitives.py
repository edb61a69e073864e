"""Analytic ray-traceable surfaces, shared by the built-in scene and the crowd figures.

Every primitive works on batches of rays in world coordinates: ``intersect(o, d)`` takes origins and unit
directions ``(M, 3)`` and returns the nearest hit distance ``(M,)`` beyond :data:`EPS` (``inf`` on a miss);
``normal(p)`` gives unit outward normals ``(M, 3)`` at surface points.

For geometry ground truth every primitive also has an exact signed distance ``sdf(p)`` ``(M, 3) -> (M,)``
(negative inside; the zero-thickness :class:`Disk` gives its unsigned distance), its surface ``area()`` and
``sample_surface(n, rng)``: ``n`` area-uniform points on its surface with their outward normals, as float64
numpy arrays ``(n, 3)``. Example: ``Sphere((0, 0, 1), 0.5).sdf(torch.tensor([[0.0, 0.0, 2.0]]))`` is
``tensor([0.5])``, and its ``area()`` is ``pi``.

Surfaces of revolution about a vertical axis (cylinder, cone, disk) are handled in their meridian half-plane
``(rho, z)``: the distance from a point to such a surface is the distance from ``(rho, z)`` to the profile
curve in that plane, which :func:`profile_distance` measures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

EPS = 1e-4
"""Minimum ray distance of a hit (avoids self-hits of shadow rays)."""
INF = float("inf")


def rot_to_local(v: torch.Tensor, c: float, s: float) -> torch.Tensor:
    """Apply ``R_z(yaw)^T`` to ``(M, 3)`` vectors, where ``c, s = cos(yaw), sin(yaw)``."""
    x, y, z = v.unbind(-1)
    return torch.stack([c * x + s * y, -s * x + c * y, z], dim=-1)


def rot_to_world(v: torch.Tensor, c: float, s: float) -> torch.Tensor:
    """Apply ``R_z(yaw)`` to ``(M, 3)`` vectors."""
    x, y, z = v.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def nonzero_safe(x: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """``x`` with entries of magnitude below ``tiny`` replaced by ``tiny`` (avoids division by zero)."""
    return torch.where(x.abs() < tiny, torch.full_like(x, tiny), x)


def segment_distance_2d(px: torch.Tensor, py: torch.Tensor, a: tuple[float, float],
                        b: tuple[float, float]) -> torch.Tensor:
    """Distance ``(M,)`` from 2-D points ``(px, py)`` (each ``(M,)``) to the segment from ``a`` to ``b``.

    Example: the point ``(1, 1)`` is at distance 1 from the segment ``(0, 0)-(2, 0)``.
    """
    ex, ey = b[0] - a[0], b[1] - a[1]
    qx, qy = px - a[0], py - a[1]
    t = ((qx * ex + qy * ey) / max(ex * ex + ey * ey, 1e-30)).clamp(0.0, 1.0)
    return torch.hypot(qx - t * ex, qy - t * ey)


def profile_distance(rho: torch.Tensor, z: torch.Tensor, polyline: list[tuple[float, float]]) -> torch.Tensor:
    """Distance ``(M,)`` from meridian points ``(rho, z)`` (``(M,)`` each, ``rho >= 0``) to a profile polyline.

    The profile of a surface of revolution about the z axis, as ``(rho, z)`` vertices; for ``rho >= 0`` this
    is the 3-D distance to the surface. Example: a capped cylinder of radius 1 from z = 0 to 2 has the profile
    ``[(0, 0), (1, 0), (1, 2), (0, 2)]``; the point ``rho = 3, z = 1`` is at distance 2.
    """
    d = torch.full_like(rho, INF)
    for a, b in zip(polyline[:-1], polyline[1:]):
        d = torch.minimum(d, segment_distance_2d(rho, z, a, b))
    return d


def _unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` float64 directions uniform on the unit sphere."""
    v = rng.normal(size=(n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)


def _disc_points(n: int, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform points in a disc of ``radius`` about the origin: ``(x, y)``, each ``(n,)``."""
    rr = radius * np.sqrt(rng.random(n))
    th = rng.uniform(0.0, 2.0 * math.pi, n)
    return rr * np.cos(th), rr * np.sin(th)



class Primitive:
    """An analytic surface. ``index`` is its position in the world's primitive list, ``obj`` its object."""

    kind = "prim"
    index: int = -1
    obj: "_Object"
    material: dict

    def intersect(self, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Nearest hit distance ``(M,)`` along unit rays ``o, d`` ``(M, 3)``; ``inf`` where missed."""
        raise NotImplementedError

    def normal(self, p: torch.Tensor) -> torch.Tensor:
        """Unit outward normals ``(M, 3)`` at surface points ``p`` ``(M, 3)``."""
        raise NotImplementedError

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def sdf(self, p: torch.Tensor) -> torch.Tensor:
        """Signed distance ``(M,)`` (negative inside) from points ``p`` ``(M, 3)``, in ``p``'s dtype."""
        raise NotImplementedError

    def area(self) -> float:
        """Surface area."""
        raise NotImplementedError

    def sample_surface(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` area-uniform surface points and their unit outward normals, both ``(n, 3)`` float64."""
        raise NotImplementedError


class Sphere(Primitive):
    kind = "sphere"

    def __init__(self, centre, radius: float):
        self.c = torch.tensor(centre, dtype=torch.float32)
        self.r = float(radius)

    def intersect(self, o, d):
        oc = o - self.c
        b = (oc * d).sum(-1)
        cc = (oc * oc).sum(-1) - self.r * self.r
        disc = b * b - cc
        sq = disc.clamp_min(0).sqrt()
        t0, t1 = -b - sq, -b + sq
        t = torch.where(t0 > EPS, t0, t1)
        return torch.where((disc >= 0) & (t > EPS), t, INF)

    def normal(self, p):
        return torch.nn.functional.normalize(p - self.c, dim=-1)

    def bbox(self):
        c = self.c.numpy()
        return c - self.r, c + self.r

    def describe(self):
        return {"type": "sphere", "centre": self.c.tolist(), "radius": self.r}

    def sdf(self, p):
        return (p - self.c.to(p)).norm(dim=-1) - self.r

    def area(self):
        return 4.0 * math.pi * self.r**2

    def sample_surface(self, n, rng):
        nrm = _unit_vectors(n, rng)
        return self.c.double().numpy() + self.r * nrm, nrm


class Box(Primitive):
    kind = "box"

    def __init__(self, centre, half, yaw: float = 0.0):
        self.c = torch.tensor(centre, dtype=torch.float32)
        self.h = torch.tensor(half, dtype=torch.float32)
        self.yaw = float(yaw)
        self.cs, self.sn = math.cos(self.yaw), math.sin(self.yaw)

    def intersect(self, o, d):
        ol = rot_to_local(o - self.c, self.cs, self.sn)
        inv = 1.0 / nonzero_safe(rot_to_local(d, self.cs, self.sn))
        t1 = (-self.h - ol) * inv
        t2 = (self.h - ol) * inv
        tn = torch.minimum(t1, t2).amax(-1)
        tf = torch.maximum(t1, t2).amin(-1)
        t = torch.where(tn > EPS, tn, tf)
        return torch.where((tf >= tn) & (t > EPS), t, INF)

    def normal(self, p):
        pl = rot_to_local(p - self.c, self.cs, self.sn)
        axis = (pl / self.h).abs().argmax(-1, keepdim=True)
        nl = torch.zeros_like(pl).scatter_(-1, axis, torch.sign(pl.gather(-1, axis)))
        return rot_to_world(nl, self.cs, self.sn)

    def bbox(self):
        c, h = self.c.numpy(), self.h.numpy()
        ext = np.array([abs(self.cs) * h[0] + abs(self.sn) * h[1], abs(self.sn) * h[0] + abs(self.cs) * h[1], h[2]])
        return c - ext, c + ext

    def describe(self):
        return {"type": "box", "centre": self.c.tolist(), "half": self.h.tolist(), "yaw": self.yaw}

    def sdf(self, p):
        q = rot_to_local(p - self.c.to(p), self.cs, self.sn).abs() - self.h.to(p)
        return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)

    def _face_areas(self) -> np.ndarray:
        """Areas of the faces ``-x, +x, -y, +y, -z, +z`` ``(6,)``."""
        h = self.h.double().numpy()
        per_axis = 4.0 * np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
        return np.repeat(per_axis, 2)

    def area(self):
        return float(self._face_areas().sum())

    def sample_surface(self, n, rng):
        areas = self._face_areas()
        face = rng.choice(6, size=n, p=areas / areas.sum())
        axis, sign = face // 2, np.where(face % 2 == 1, 1.0, -1.0)
        h = self.h.double().numpy()
        local = rng.uniform(-1.0, 1.0, size=(n, 3)) * h
        rows = np.arange(n)
        local[rows, axis] = sign * h[axis]
        nrm = np.zeros((n, 3))
        nrm[rows, axis] = sign
        c, s = self.cs, self.sn

        def to_world(v):
            return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)

        return self.c.double().numpy() + to_world(local), to_world(nrm)


class Cylinder(Primitive):
    """Capped cylinder with a vertical axis through ``(cx, cy)``, from ``z0`` to ``z1``."""

    kind = "cylinder"

    def __init__(self, cx: float, cy: float, radius: float, z0: float, z1: float):
        self.cx, self.cy, self.r, self.z0, self.z1 = float(cx), float(cy), float(radius), float(z0), float(z1)

    def intersect(self, o, d):
        ox, oy, oz = o[:, 0] - self.cx, o[:, 1] - self.cy, o[:, 2]
        dx, dy, dz = d.unbind(-1)
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - self.r * self.r
        disc = b * b - a * c
        sq = disc.clamp_min(0).sqrt()
        a_s = a.clamp_min(1e-12)
        side_ok = (disc >= 0) & (a > 1e-12)
        best = torch.full_like(a, INF)
        for t in ((-b - sq) / a_s, (-b + sq) / a_s):
            z = oz + t * dz
            ok = side_ok & (t > EPS) & (z >= self.z0) & (z <= self.z1)
            best = torch.minimum(best, torch.where(ok, t, INF))
        dz_s = nonzero_safe(dz)
        for zc in (self.z0, self.z1):
            t = (zc - oz) / dz_s
            x, y = ox + t * dx, oy + t * dy
            ok = (t > EPS) & (x * x + y * y <= self.r * self.r)
            best = torch.minimum(best, torch.where(ok, t, INF))
        return best

    def normal(self, p):
        x, y, z = p[:, 0] - self.cx, p[:, 1] - self.cy, p[:, 2]
        rho = (x * x + y * y).sqrt().clamp_min(1e-9)
        side = torch.stack([x / rho, y / rho, torch.zeros_like(x)], -1)
        res = torch.stack([(rho - self.r).abs(), (z - self.z1).abs(), (z - self.z0).abs()], -1)
        which = res.argmin(-1)
        up = torch.tensor([0.0, 0.0, 1.0])
        n = torch.where((which == 1)[:, None], up, side)
        return torch.where((which == 2)[:, None], -up, n)

    def bbox(self):
        return (np.array([self.cx - self.r, self.cy - self.r, self.z0]),
                np.array([self.cx + self.r, self.cy + self.r, self.z1]))

    def describe(self):
        return {"type": "cylinder", "centre": [self.cx, self.cy, 0.5 * (self.z0 + self.z1)],
                "radius": self.r, "z0": self.z0, "z1": self.z1}

    def sdf(self, p):
        rho = torch.hypot(p[:, 0] - self.cx, p[:, 1] - self.cy)
        dr, dz = rho - self.r, torch.maximum(self.z0 - p[:, 2], p[:, 2] - self.z1)
        return torch.hypot(dr.clamp_min(0), dz.clamp_min(0)) + torch.maximum(dr, dz).clamp_max(0)

    def area(self):
        return 2.0 * math.pi * self.r * (self.z1 - self.z0) + 2.0 * math.pi * self.r**2

    def sample_surface(self, n, rng):
        side, cap = 2.0 * math.pi * self.r * (self.z1 - self.z0), math.pi * self.r**2
        part = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))  # side, bottom, top
        th = rng.uniform(0.0, 2.0 * math.pi, n)
        pts = np.stack([self.r * np.cos(th), self.r * np.sin(th), rng.uniform(self.z0, self.z1, n)], axis=1)
        nrm = np.stack([np.cos(th), np.sin(th), np.zeros(n)], axis=1)
        dx, dy = _disc_points(n, self.r, rng)
        for k, z, nz in ((1, self.z0, -1.0), (2, self.z1, 1.0)):
            m = part == k
            pts[m] = np.stack([dx[m], dy[m], np.full(m.sum(), z)], axis=1)
            nrm[m] = (0.0, 0.0, nz)
        return pts + np.array([self.cx, self.cy, 0.0]), nrm


class Cone(Primitive):
    """Upright cone with a capped base of ``radius`` at ``z0`` and its apex at ``z0 + height``."""

    kind = "cone"

    def __init__(self, cx: float, cy: float, radius: float, z0: float, height: float):
        self.cx, self.cy, self.r, self.z0, self.hgt = float(cx), float(cy), float(radius), float(z0), float(height)
        self.za = self.z0 + self.hgt
        self.k = self.r / self.hgt

    def intersect(self, o, d):
        ox, oy, ow = o[:, 0] - self.cx, o[:, 1] - self.cy, self.za - o[:, 2]  # w: depth below the apex
        dx, dy, dz = d.unbind(-1)
        dw = -dz
        k2 = self.k * self.k
        a = dx * dx + dy * dy - k2 * dw * dw
        b = ox * dx + oy * dy - k2 * ow * dw
        c = ox * ox + oy * oy - k2 * ow * ow
        disc = b * b - a * c
        sq = disc.clamp_min(0).sqrt()
        a_s = nonzero_safe(a, 1e-9)
        best = torch.full_like(a, INF)
        for t in ((-b - sq) / a_s, (-b + sq) / a_s):
            w = ow + t * dw
            ok = (disc >= 0) & (t > EPS) & (w >= 0) & (w <= self.hgt)
            best = torch.minimum(best, torch.where(ok, t, INF))
        t = (self.z0 - o[:, 2]) / nonzero_safe(dz)
        x, y = ox + t * dx, oy + t * dy
        ok = (t > EPS) & (x * x + y * y <= self.r * self.r)
        return torch.minimum(best, torch.where(ok, t, INF))

    def normal(self, p):
        x, y, z = p[:, 0] - self.cx, p[:, 1] - self.cy, p[:, 2]
        rho = (x * x + y * y).sqrt()
        norm = math.sqrt(1.0 + self.k * self.k)
        rho_s = rho.clamp_min(1e-9)
        side = torch.stack([x / rho_s / norm, y / rho_s / norm, torch.full_like(x, self.k / norm)], -1)
        side = torch.where((rho < 1e-9)[:, None], torch.tensor([0.0, 0.0, 1.0]), side)
        base = ((z - self.z0).abs() < (rho - self.k * (self.za - z)).abs() / norm)[:, None]
        return torch.where(base, torch.tensor([0.0, 0.0, -1.0]), side)

    def bbox(self):
        return (np.array([self.cx - self.r, self.cy - self.r, self.z0]),
                np.array([self.cx + self.r, self.cy + self.r, self.za]))

    def describe(self):
        return {"type": "cone", "centre": [self.cx, self.cy, self.z0], "radius": self.r, "height": self.hgt}

    def sdf(self, p):
        rho = torch.hypot(p[:, 0] - self.cx, p[:, 1] - self.cy)
        z = p[:, 2]
        dist = profile_distance(rho, z, [(0.0, self.z0), (self.r, self.z0), (0.0, self.za)])
        inside = (z >= self.z0) & (rho <= self.k * (self.za - z))
        return torch.where(inside, -dist, dist)

    def area(self):
        return math.pi * self.r * math.hypot(self.r, self.hgt) + math.pi * self.r**2

    def sample_surface(self, n, rng):
        slant, base = math.pi * self.r * math.hypot(self.r, self.hgt), math.pi * self.r**2
        on_base = rng.random(n) < base / (slant + base)
        # lateral surface: the area within distance s of the apex grows as s^2, so s = sqrt(u) (as a fraction)
        w = np.sqrt(rng.random(n))
        th = rng.uniform(0.0, 2.0 * math.pi, n)
        pts = np.stack([self.r * w * np.cos(th), self.r * w * np.sin(th), self.za - self.hgt * w], axis=1)
        norm = math.sqrt(1.0 + self.k * self.k)
        nrm = np.stack([np.cos(th) / norm, np.sin(th) / norm, np.full(n, self.k / norm)], axis=1)
        dx, dy = _disc_points(n, self.r, rng)
        pts[on_base] = np.stack([dx[on_base], dy[on_base], np.full(on_base.sum(), self.z0)], axis=1)
        nrm[on_base] = (0.0, 0.0, -1.0)
        return pts + np.array([self.cx, self.cy, 0.0]), nrm


class Disk(Primitive):
    """The ground: a disk of ``radius`` in the plane ``z = 0`` centred on the origin."""

    kind = "disk"

    def __init__(self, radius: float):
        self.r = float(radius)

    def intersect(self, o, d):
        t = -o[:, 2] / nonzero_safe(d[:, 2])
        x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
        return torch.where((t > EPS) & (x * x + y * y <= self.r * self.r), t, INF)

    def normal(self, p):
        return torch.tensor([0.0, 0.0, 1.0]).expand(p.shape[0], 3).clone()

    def bbox(self):
        return np.array([-self.r, -self.r, 0.0]), np.array([self.r, self.r, 0.0])

    def describe(self):
        return {"type": "disk", "centre": [0.0, 0.0, 0.0], "radius": self.r}

    def sdf(self, p):
        """Unsigned distance ``(M,)`` to the disk: it has no inside (zero thickness)."""
        return profile_distance(torch.hypot(p[:, 0], p[:, 1]), p[:, 2], [(0.0, 0.0), (self.r, 0.0)])

    def area(self):
        """Area of one side (the upper face: the ground is only ever seen from above)."""
        return math.pi * self.r**2

    def sample_surface(self, n, rng):
        """Points on the upper face, normals ``+z``."""
        x, y = _disc_points(n, self.r, rng)
        return np.stack([x, y, np.zeros(n)], axis=1), np.tile([0.0, 0.0, 1.0], (n, 1))


class Capsule(Primitive):
    """A segment from ``a`` to ``b`` swept by a sphere of ``radius`` (limbs and torsos of the crowd figures)."""

    kind = "capsule"

    def __init__(self, a, b, radius: float):
        self.a = torch.tensor(a, dtype=torch.float32)
        self.b = torch.tensor(b, dtype=torch.float32)
        self.r = float(radius)

    def intersect(self, o, d):
        ba = self.b - self.a
        oa = o - self.a
        baba = float(ba @ ba)
        bard = d @ ba
        baoa = oa @ ba
        rdoa = (d * oa).sum(-1)
        oaoa = (oa * oa).sum(-1)
        # the infinite cylinder around the axis: a t^2 + 2 b t + c = 0
        qa = baba - bard * bard
        qb = baba * rdoa - baoa * bard
        qc = baba * oaoa - baoa * baoa - self.r * self.r * baba
        disc = qb * qb - qa * qc
        t_body = (-qb - disc.clamp_min(0).sqrt()) / nonzero_safe(qa)
        along = baoa + t_body * bard  # axis coordinate of the hit, times |ba|
        body = (disc >= 0) & (qa.abs() > 1e-12) & (along > 0) & (along < baba) & (t_body > EPS)
        # otherwise the nearer end cap (a sphere at a or b)
        best = torch.where(body, t_body, torch.full_like(t_body, INF))
        for centre in (self.a, self.b):
            oc = o - centre
            b = (oc * d).sum(-1)
            c = (oc * oc).sum(-1) - self.r * self.r
            h = b * b - c
            t = -b - h.clamp_min(0).sqrt()
            best = torch.minimum(best, torch.where((h >= 0) & (t > EPS), t, torch.full_like(t, INF)))
        return best

    def normal(self, p):
        ba = self.b - self.a
        h = (((p - self.a) @ ba) / float(ba @ ba)).clamp(0, 1)
        return torch.nn.functional.normalize(p - self.a - h[:, None] * ba, dim=-1)

    def bbox(self):
        a, b = self.a.numpy(), self.b.numpy()
        return np.minimum(a, b) - self.r, np.maximum(a, b) + self.r

    def describe(self):
        return {"type": "capsule", "a": self.a.tolist(), "b": self.b.tolist(), "radius": self.r}

    def sdf(self, p):
        a = self.a.to(p)
        ba = self.b.to(p) - a
        h = (((p - a) @ ba) / (ba @ ba).clamp_min(1e-30)).clamp(0, 1)
        return (p - a - h[:, None] * ba).norm(dim=-1) - self.r

    def area(self):
        return 2.0 * math.pi * self.r * float((self.b - self.a).norm()) + 4.0 * math.pi * self.r**2

    def sample_surface(self, n, rng):
        a, b = self.a.double().numpy(), self.b.double().numpy()
        length = float(np.linalg.norm(b - a))
        body = 2.0 * math.pi * self.r * length
        on_body = rng.random(n) < body / (body + 4.0 * math.pi * self.r**2)
        u = _unit_vectors(n, rng)
        axis = (b - a) / max(length, 1e-300)
        # the end caps: a direction pointing away from b sits on a's hemisphere, otherwise on b's
        centre = np.where(((u @ axis) < 0)[:, None], a, b)
        # the body: a direction perpendicular to the axis (u with its axial part removed) at a uniform height
        perp = u - (u @ axis)[:, None] * axis
        perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-300)
        nrm = np.where(on_body[:, None], perp, u)
        base = np.where(on_body[:, None], a + rng.random(n)[:, None] * (b - a), centre)
        return base + self.r * nrm, nrm
