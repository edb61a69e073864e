"""The provenance field: a stochastic field of "where was this point seen from", trained by fIMLE.

Following ProvNeRF (spec ``../shared/specs/blog_papers.md`` §7; the official code's defaults unless said):

* **Latent random functions.** ``K`` functions ``z_j(x) = A_j PE(x)``, each a random linear map of the positional
  encoding to ``latent_dim`` numbers, ``A_j`` drawn Xavier-normal with gain sqrt(2) and re-drawn every
  ``redraw_every`` steps. A sample of the field is a whole function of ``x``, so samples are spatially coherent.
* **Transform** ``H``: an MLP on ``[PE(x), z_j(x)]`` giving a direction vector ``D_j(x)`` (unnormalised: its
  length stands for the transmittance, loss type 0 of the code) and a distance ``t_j(x)`` in ``[near, far]``
  through a sigmoid.
* **fIMLE loss**: each empirical sample ``(x, d, t, T)`` pulls only the nearest of the ``K`` model samples:
  ``min_j |T d - D_j(x)|^2 + min_j T ((t_j(x) - t) / (far - near))^2``. The distance term is weighted by ``T``
  here (the code leaves it unweighted): the distance of a camera that did not see the point is not provenance.
* **Contributors** (our variant of the spec's "categorical head over contributors"): each user's
  transmittance-weighted observations counted on a voxel grid (:meth:`ProvenanceField.set_contributors`), so the
  share of each user's visible observations of ``x`` is read exactly at voxel resolution. A learned head
  (an MLP on the same inputs, cross-entropy weighted by ``T``) blurred small private objects away: on a 6-user
  crowd its share for a person's own user was 0.21 at the person's pixels, against 1/6 for no information.

Sizes are smaller than the paper's (width 128, ``K`` 16, ``multires`` 6, a few thousand steps) so that a field trains
in about a minute on two CPU cores; ``ProvenanceConfig`` holds every choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from privnerf.fields.encoding import positional_encoding
from privnerf.provenance.samples import ProvenanceSamples


@dataclass
class ProvenanceConfig:
    """The provenance field and its training."""

    samples: int = 16
    """K, model samples per point (the code's ``cimle_sample_num``)."""
    latent_dim: int = 32
    multires: int = 6
    width: int = 128
    layers: int = 3
    lr: float = 2e-3
    steps: int = 2000
    batch: int = 1024
    redraw_every: int = 200
    """Steps between re-draws of the random functions (the code's ``i_cache`` is 1000 of 500k steps)."""
    seed: int = 0
    field_features: bool = True
    """Condition on the radiance field at ``x`` (its grid features and density, and the direction of the density
    gradient, a surface normal where there is a surface), as ProvNeRF conditions on the NeRF's feature. Without
    them the field sees only ``PE(x)``, too coarse for the sides of thin objects (measured in
    ``docs/provenance.md``)."""


@torch.no_grad()
def radiance_features(field, x: torch.Tensor, h: float, chunk: int = 65536) -> torch.Tensor:
    """What the provenance field reads from a radiance field at world points ``x`` ``(n, 3)``: the field's encoding
    (density logit and features, :meth:`encode_space`), ``log(1 + |grad sigma|)`` and the unit vector
    ``-grad sigma / |grad sigma|`` (central differences at distance ``h``). Returns ``(n, cut_channels + 4)``."""
    outs = []
    offs = torch.eye(3) * h
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        enc = field.encode_space(field.space(xc)) if hasattr(field, "encode_space") else field.density(xc)[:, None]
        grad = torch.stack([(field.density(xc + offs[k]) - field.density(xc - offs[k])) / (2 * h) for k in range(3)], -1)
        g = grad.norm(dim=-1, keepdim=True)
        outs.append(torch.cat([enc, torch.log1p(g), -grad / g.clamp_min(1e-6)], -1))
    return torch.cat(outs)


class ProvenanceField(nn.Module):
    """``x (n, 3)`` → ``K`` provenance samples (direction vectors and distances) and ``p(user | x)``.

    Example::

        pf = ProvenanceField(ProvenanceConfig(), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), near=0.1, far=6.0,
                             users=3)
        D, t = pf.sample(torch.zeros(5, 3))   # (16, 5, 3), (16, 5)
        pf.user_shares(torch.zeros(5, 3)).shape   # (5, 3): uniform until set_contributors(samples, voxel)
    """

    def __init__(self, cfg: ProvenanceConfig, aabb: torch.Tensor, near: float, far: float, users: int = 1,
                 cond_dim: int = 0):
        super().__init__()
        self.cond_dim = int(cond_dim) if cfg.field_features else 0
        self._field: list = []  # the radiance field the features come from (not a submodule: not saved with it)
        self.feature_h = 0.0
        self.register_buffer("cond_mean", torch.zeros(self.cond_dim))
        self.register_buffer("cond_std", torch.ones(self.cond_dim))
        self.cfg = cfg
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.near, self.far, self.users = float(near), float(far), int(users)
        pe = 3 + 6 * cfg.multires
        self.pe_dim = pe
        self.in_dim = pe + self.cond_dim
        layers: list[nn.Module] = []
        d_in = self.in_dim + cfg.latent_dim
        for _ in range(cfg.layers):
            layers += [nn.Linear(d_in, cfg.width), nn.ReLU()]
            d_in = cfg.width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.width, 4)
        # contributors: transmittance-weighted observation counts per user on a voxel grid (set_contributors)
        self.register_buffer("user_counts", torch.zeros(0))
        self.register_buffer("user_grid_res", torch.zeros(3, dtype=torch.long))
        self.register_buffer("fns", torch.zeros(cfg.samples, pe, cfg.latent_dim))
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self.redraw()

    def redraw(self) -> None:
        """New random functions ``A_j`` (Xavier normal, gain sqrt(2))."""
        std = math.sqrt(2.0) * math.sqrt(2.0 / (self.pe_dim + self.cfg.latent_dim))
        self.fns.copy_(torch.randn(self.fns.shape, generator=self._gen) * std)

    def attach(self, field, h: float, fit_on: torch.Tensor | None = None) -> "ProvenanceField":
        """Read features from radiance ``field`` (central differences at ``h``); with ``fit_on`` ``(m, 3)``, set the
        features' normalisation from those points (done once, before training)."""
        self._field = [field]
        self.feature_h = float(h)
        if fit_on is not None and self.cond_dim:
            f = radiance_features(field, fit_on, h)
            self.cond_mean.copy_(f.mean(0))
            self.cond_std.copy_(f.std(0).clamp_min(1e-3))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """World points ``(n, 3)`` → ``(n, in_dim)``: ``PE(x)`` with the box mapped to ``[-1, 1]``, then the
        normalised radiance-field features (:func:`radiance_features`) when the field conditions on them."""
        xn = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]).clamp_min(1e-9) * 2 - 1
        pe = positional_encoding(xn, self.cfg.multires)
        if not self.cond_dim:
            return pe
        if not self._field:
            raise RuntimeError("ProvenanceField conditions on a radiance field: call attach(field, h) first")
        f = radiance_features(self._field[0], x, self.feature_h)
        return torch.cat([pe, (f - self.cond_mean) / self.cond_std], -1)

    def sample(self, x: torch.Tensor, enc: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``K`` samples at ``x (n, 3)``: direction vectors ``(K, n, 3)`` (length ~ transmittance) and distances
        ``(K, n)`` in ``[near, far]``. ``enc``: :meth:`encode` of ``x`` when already computed."""
        pe = self.encode(x) if enc is None else enc
        z = torch.einsum("np,kpl->knl", pe[:, :self.pe_dim], self.fns)
        h = self.trunk(torch.cat([pe.expand(len(self.fns), -1, -1), z], -1))
        out = self.head(h)
        t = self.near + (self.far - self.near) * torch.sigmoid(out[..., 3])
        return out[..., :3], t

    @torch.no_grad()
    def set_contributors(self, s: ProvenanceSamples, voxel: float, prior: float = 0.5) -> None:
        """Count each user's visible observations (weight ``T``) on a voxel grid of size ``voxel`` over the box,
        splatted trilinearly. :meth:`user_shares` reads it back (with a Dirichlet ``prior`` of total ``prior``)."""
        ext = (self.aabb[1] - self.aabb[0]).clamp_min(1e-6)
        res = torch.clamp((ext / voxel).ceil().long() + 1, min=2)
        counts = torch.zeros(int(res.prod()), max(self.users, 1))
        for i in range(0, len(s), 262144):
            idx, w = self._corners(s.x[i:i + 262144], res)
            val = w * s.trans[i:i + 262144, None]  # (n, 8)
            counts.index_put_((idx.reshape(-1), s.user[i:i + 262144, None].expand(-1, 8).reshape(-1)),
                              val.reshape(-1), accumulate=True)
        self.user_counts = counts
        self.user_grid_res = res
        self.user_prior = prior

    def _corners(self, x: torch.Tensor, res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices ``(n, 8)`` of the 8 grid corners around ``x`` and their trilinear weights ``(n, 8)``."""
        ext = (self.aabb[1] - self.aabb[0]).clamp_min(1e-6)
        g = ((x - self.aabb[0]) / ext).clamp(0, 1) * (res - 1).float()
        g0 = g.floor().long().clamp(max=res - 2)
        f = g - g0.float()
        idx, wts = [], []
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    c = g0 + torch.tensor([dx, dy, dz])
                    idx.append((c[:, 0] * res[1] + c[:, 1]) * res[2] + c[:, 2])
                    wts.append((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                               * (f[:, 2] if dz else 1 - f[:, 2]))
        return torch.stack(idx, 1), torch.stack(wts, 1)

    def user_shares(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, users)``: each contributor's share of the visible observations around ``x`` (rows sum to 1)."""
        if self.user_counts.numel() == 0:
            return torch.full((len(x), max(self.users, 1)), 1.0 / max(self.users, 1))
        idx, w = self._corners(x, self.user_grid_res)
        c = (self.user_counts[idx] * w[..., None]).sum(1)
        prior = getattr(self, "user_prior", 0.5)
        return (c + prior / c.shape[1]) / (c.sum(1, keepdim=True) + prior)

    @torch.no_grad()
    def draw(self, x: torch.Tensor, draws: int = 4, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """``draws * K`` samples at ``x`` with fresh random functions for each group of ``K`` (the field's own are
        restored after): ``(S, n, 3)`` and ``(S, n)``."""
        saved = self.fns.clone()
        gen_state = self._gen.get_state()
        self._gen.manual_seed(self.cfg.seed + 7919)
        ds, ts = [], []
        encs = [self.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)]
        try:
            for _ in range(draws):
                self.redraw()
                parts = [self.sample(x[i:i + chunk], e) for i, e in zip(range(0, len(x), chunk), encs, strict=True)]
                ds.append(torch.cat([p[0] for p in parts], 1))
                ts.append(torch.cat([p[1] for p in parts], 1))
        finally:
            self.fns.copy_(saved)
            self._gen.set_state(gen_state)
        return torch.cat(ds), torch.cat(ts)

    def state(self) -> dict:
        return {"format": "privnerf-provenance/1", "config": asdict(self.cfg), "aabb": self.aabb.tolist(),
                "near": self.near, "far": self.far, "users": self.users, "cond_dim": self.cond_dim,
                "feature_h": self.feature_h, "user_prior": getattr(self, "user_prior", 0.5),
                "weights": self.state_dict()}

    @classmethod
    def from_state(cls, st: dict, field=None) -> "ProvenanceField":
        """Rebuild a saved field; ``field``: the radiance field it was trained on (needed when it reads features)."""
        pf = cls(ProvenanceConfig(**st["config"]), torch.tensor(st["aabb"]), st["near"], st["far"], st["users"],
                 st.get("cond_dim", 0))
        w = st["weights"]
        pf.user_counts = w["user_counts"]  # its size is the grid's, unknown before loading
        pf.user_grid_res = w["user_grid_res"]
        pf.user_prior = st.get("user_prior", 0.5)
        pf.load_state_dict(w)
        if pf.cond_dim:
            if field is None:
                raise ValueError("this provenance field reads the radiance field's features: pass field=")
            pf.attach(field, st["feature_h"])
        return pf


def fimle_loss(D: torch.Tensor, t: torch.Tensor, d: torch.Tensor, t_obs: torch.Tensor, trans: torch.Tensor,
               span: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The fIMLE loss of one batch: each observation pulls only its nearest model sample.

    Args:
        D: ``(K, n, 3)`` model direction vectors; t: ``(K, n)`` model distances.
        d: ``(n, 3)`` observed unit directions; t_obs: ``(n,)`` observed distances; trans: ``(n,)`` transmittance.
        span: ``far - near`` (distances are compared in that unit).
    Returns:
        direction loss and distance loss (0-d). Example: with ``K = 1`` this is plain regression onto ``T d``;
        the loss is never above the same sum with the mean over ``K`` in place of the minimum.
    """
    target = trans[:, None] * d
    l_dir = ((D - target[None]) ** 2).sum(-1).amin(0).mean()
    l_t = (trans * (((t - t_obs[None]) / span) ** 2).amin(0)).mean()
    return l_dir, l_t


def train_provenance(pf: ProvenanceField, s: ProvenanceSamples, quiet: bool = True) -> list[float]:
    """Fit ``pf`` to the observations ``s`` (``pf.cfg.steps`` Adam steps). Returns the loss every 100 steps."""
    cfg = pf.cfg
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(pf.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    span = pf.far - pf.near
    with torch.no_grad():  # the inputs never change: encode every observation once
        enc_all = torch.cat([pf.encode(s.x[i:i + 65536]) for i in range(0, len(s), 65536)])
    curve = []
    bar = tqdm(range(cfg.steps), desc="provenance", disable=quiet, leave=False)
    for step in bar:
        if step % cfg.redraw_every == 0:
            pf.redraw()
        idx = torch.randint(len(s), (cfg.batch,), generator=g)
        x, enc = s.x[idx], enc_all[idx]
        D, t = pf.sample(x, enc)
        l_dir, l_t = fimle_loss(D, t, s.d[idx], s.t[idx], s.trans[idx], span)
        loss = l_dir + l_t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            curve.append(float(loss.detach()))
            bar.set_postfix(loss=f"{curve[-1]:.4f}")
    return curve
