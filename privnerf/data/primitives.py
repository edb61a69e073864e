"""Analytic ray-traceable surfaces, shared by the built-in scene and the crowd figures.

Every primitive works on batches of rays in world coordinates: ``intersect(o, d)`` takes origins and unit
directions ``(M, 3)`` and returns the nearest hit distance ``(M,)`` beyond :data:`EPS` (``inf`` on a miss);
``normal(p)`` gives unit outward normals ``(M, 3)`` at surface points.
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
