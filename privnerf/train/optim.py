"""Adam for dense grids that only touches the voxels a batch reached (CPU), or plain dense Adam (CUDA).

On the CPU a :class:`~privnerf.fields.encoding.DenseGrid` accumulates its gradient in its own buffer and
marks touched voxels; :meth:`GridAdam.step` updates just those (SparseAdam semantics: an untouched voxel's
moments are not decayed). With a few percent of voxels hit per step this replaces passes over tens of
millions of parameters.
"""

from __future__ import annotations

import torch

from privnerf.fields.encoding import DenseGrid


class GridAdam:
    def __init__(self, grids: list[DenseGrid], lrs: list[float], betas=(0.9, 0.99), eps: float = 1e-15):
        self.grids = grids
        self.lrs = list(lrs)
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.state: list[dict[str, torch.Tensor]] = [self._fresh(g) for g in grids]

    @staticmethod
    def _fresh(grid: DenseGrid) -> dict[str, torch.Tensor]:
        return {"exp_avg": torch.zeros_like(grid.data.data), "exp_avg_sq": torch.zeros_like(grid.data.data)}

    def reset(self) -> None:
        """Call after grids were resampled (shapes changed): moments restart from zero."""
        self.state = [self._fresh(g) for g in self.grids]

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        bias1 = 1 - b1**self.step_count
        bias2 = 1 - b2**self.step_count
        for grid, lr, st in zip(self.grids, self.lrs, self.state):
            if st["exp_avg"].shape != grid.data.shape:
                st.update(self._fresh(grid))
            if grid.sparse:
                grid._ext.sparse_adam_step(
                    grid.data.data, grid.grad_buffer(), st["exp_avg"], st["exp_avg_sq"], grid.touched_mask(),
                    lr * lr_scale, b1, b2, self.eps, bias1, bias2,
                )
                continue
            g = grid.data.grad
            if g is None:
                continue
            st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
            st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (st["exp_avg_sq"] / bias2).sqrt_().add_(self.eps)
            grid.data.addcdiv_(st["exp_avg"], denom, value=-lr * lr_scale / bias1)
            grid.data.grad = None

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "state": self.state, "lrs": self.lrs}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = int(sd["step_count"])
        self.state = [{k: v.to(g.data.device) for k, v in st.items()} for st, g in zip(sd["state"], self.grids)]
