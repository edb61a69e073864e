"""JacobiNeRF's dense setting: one fully labelled view → labels everywhere, through chosen seeds and a learned
response aggregator (spec ``idobscured_jacobinerf.md`` B.6, "Dense setting").

With a whole labelled view, averaging every pixel's Jacobian per class (what :func:`label_directions` does for
any set of clicks) blurs classes whose pixels resonate unevenly. The paper instead

1. **chooses seeds**: for ``rounds`` rounds, draws ``candidates`` labelled pixels per class; candidate ``j`` of
   every class forms combination ``j``; each class's response to its candidate is averaged with the responses
   of the seeds already chosen, post-processed, and the combination with the best mIoU on the labelled view
   is kept;
2. **learns an aggregator**: a small MLP (``K → 128 → 64 → K``) from the ``K`` classes' responses at a pixel
   (cumulative means over the chosen rounds, clipped at 0.8) to its label, trained by cross-entropy on the
   labelled view;
3. at a new view, feeds each class's mean response over its seeds to the aggregator and takes the argmax.

Our choices where the released code is odd or costly: responses come from the closed form
(:func:`~privnerf.semantics.jacobian.perturbed_response`, exact for the grid field's linear head) instead of
re-rendering; a combination is accepted only when it improves on the best mIoU so far (the released code's
best-so-far never updates, so every round is accepted; ours may stop adding seeds early, ``rounds`` being the
maximum); the aggregator trains ``steps`` steps (default 2,000 instead of 200,000: it converges in a few
hundred on the built-in scene) on all labelled pixels at once.

Example (a two-class toy: a class's responses are high where it is)::

    >>> import torch
    >>> from privnerf.semantics.aggregator import train_aggregator
    >>> resp = torch.zeros(1, 2, 4, 4); resp[0, 0, :, :2] = 0.5; resp[0, 1, :, 2:] = 0.5
    >>> labels = torch.zeros(4, 4, dtype=torch.long); labels[:, 2:] = 1
    >>> agg = train_aggregator(resp, labels, steps=200)
    >>> agg.predict(resp[0]).tolist() == labels.tolist()
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privnerf.semantics.jacobian import DEFAULT_VIEW


@dataclass
class AggregatorConfig:
    candidates: int = 20
    """Labelled pixels drawn per class and round (the paper's ``--num_comb``)."""
    rounds: int = 5
    """Seed rounds at most (the paper's ``--num_iters``)."""
    steps: int = 2000
    """Aggregator training steps (Adam, lr ``lr``, full batch)."""
    lr: float = 1e-3
    t: float = 0.1
    """Perturbation step (the responses' scale)."""
    seed: int = 0


class Aggregator(torch.nn.Module):
    """``K → 128 → 64 → K`` with ReLU: per-pixel class logits from the K classes' responses."""

    def __init__(self, k: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(k, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                                       torch.nn.ReLU(), torch.nn.Linear(64, k))

    def forward(self, resp: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., K)`` from responses ``(K, ...)``."""
        return self.net(resp.clamp(max=0.8).movedim(0, -1))

    @torch.no_grad()
    def predict(self, resp: torch.Tensor) -> torch.Tensor:
        """Class indices ``(h, w)`` from one view's responses ``(K, h, w)``."""
        return self(resp).argmax(-1)


def train_aggregator(rounds: torch.Tensor, labels: torch.Tensor, steps: int = 2000, lr: float = 1e-3,
                     seed: int = 0, ignore: int = -1) -> Aggregator:
    """Fit the aggregator on the labelled view: ``rounds`` ``(R, K, h, w)`` (cumulative mean responses, one set per
    chosen round; a random round each step, as the paper samples them), ``labels`` ``(h, w)`` class indices
    (``ignore`` for void)."""
    torch.manual_seed(seed)
    agg = Aggregator(rounds.shape[1])
    opt = torch.optim.Adam(agg.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    keep = labels != ignore
    for _ in range(steps):
        r = rounds[int(torch.randint(len(rounds), (1,), generator=g))]
        loss = F.cross_entropy(agg(r)[keep], labels[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return agg.eval()


def clicks_label_map(clicks, labels: list[str], h: int, w: int) -> np.ndarray:
    """The ``(h, w)`` label-index map (``-1`` where unlabelled) of clicks that all lie in one view."""
    if len({c.view for c in clicks}) != 1:
        raise ValueError("the dense setting takes the clicks of one labelled view; these span "
                         f"{len({c.view for c in clicks})} views")
    out = np.full((h, w), -1, np.int64)
    for c in clicks:
        out[c.v, c.u] = labels.index(c.label)
    return out


class DensePropagation:
    """The dense setting on one trainer: :meth:`fit` on a labelled training view, :meth:`predict` on any camera.

    ``labels_map``: ``(h, w)`` int class indices into ``labels`` (``-1`` = void) for training view ``view_index``.
    """

    def __init__(self, trainer, view: str = DEFAULT_VIEW, cfg: AggregatorConfig | None = None):
        self.trainer, self.view, self.cfg = trainer, view, cfg or AggregatorConfig()
        self.G: torch.Tensor | None = None  # (R, K, 3, width): each chosen round's seed Jacobians
        self.aggregator: Aggregator | None = None
        self.history: list[float] = []

    def fit(self, view_index: int, labels_map: np.ndarray, k: int) -> "DensePropagation":
        from privnerf.semantics.propagate import postprocess, segmentation_metrics, view_activations, view_responses
        from privnerf.semantics.shaping import pixel_jacobians

        t, c = self.trainer, self.cfg
        sc = t.scene
        labels = torch.as_tensor(np.asarray(labels_map), dtype=torch.long)
        present = [cl for cl in range(k) if (labels == cl).any()]
        if len(present) < 1:
            raise ValueError("the labelled view has no labelled pixel")
        a, op = view_activations(t, sc.c2w[view_index], sc.intrinsics[view_index], *sc.hw(view_index), view=self.view)
        rng = np.random.default_rng(c.seed)
        pix = {cl: np.argwhere(labels.numpy() == cl) for cl in present}  # (n, 2) rows, cols
        chosen: list[torch.Tensor] = []  # per round: (K, 3, width) Jacobians of the chosen combination
        sums = torch.zeros(k, *op.shape)  # running sums of the chosen seeds' responses
        rounds: list[torch.Tensor] = []
        best = -1.0
        for r in range(c.rounds):
            picks = {cl: pix[cl][rng.choice(len(pix[cl]), c.candidates, replace=len(pix[cl]) < c.candidates)]
                     for cl in present}
            jac = {}
            for cl in present:
                rc = torch.as_tensor(picks[cl])
                with torch.no_grad():
                    jac[cl] = pixel_jacobians(t, torch.full((c.candidates,), view_index), rc[:, 1], rc[:, 0],
                                              jitter=False, view=self.view).cpu()
            resp = {cl: view_responses(a, op, jac[cl], c.t) for cl in present}  # (candidates, h, w)
            scores, means = [], []
            for j in range(c.candidates):
                m = sums.clone()
                for cl in present:
                    m[cl] = (sums[cl] + resp[cl][j]) / (r + 1)
                pred = torch.softmax(postprocess(m), 0).argmax(0)
                scores.append(segmentation_metrics([pred.numpy()], [labels.numpy()], list(range(k)), void=-1)["miou"])
                means.append(m)
            j = int(np.argmax(scores))
            if scores[j] <= best:
                break
            best = scores[j]
            for cl in present:
                sums[cl] += resp[cl][j]
            chosen.append(torch.stack([jac[cl][j] if cl in jac else torch.zeros_like(jac[present[0]][0])
                                       for cl in range(k)]))
            rounds.append(means[j])
            self.history.append(best)
        self.G = torch.stack(chosen)
        self.aggregator = train_aggregator(torch.stack(rounds), labels, c.steps, c.lr, c.seed)
        return self

    def predict(self, c2w, intrinsics, h: int, w: int) -> torch.Tensor:
        """Class indices ``(h, w)`` of one camera."""
        from privnerf.semantics.propagate import view_activations, view_responses

        if self.G is None or self.aggregator is None:
            raise RuntimeError("DensePropagation.predict before fit")
        a, op = view_activations(self.trainer, c2w, intrinsics, h, w, view=self.view)
        resp = torch.stack([view_responses(a, op, g, self.cfg.t) for g in self.G]).mean(0)  # each class's mean over its seeds
        return self.aggregator.predict(resp)


__all__ = ["Aggregator", "AggregatorConfig", "DensePropagation", "clicks_label_map", "train_aggregator"]
