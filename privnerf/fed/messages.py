"""What crosses the boundary between a DecentNeRF client and the server: the message schema, in one place.

Server → client (``FitIns``):
    ``parameters``: the global field's arrays (phase ``grad``), or the securely summed gradient arrays plus
    the summed loss (phase ``train``, learned aggregation from round 2);
    ``config``: ``round``, ``phase``, ``bounds`` (JSON list, one per array, see :mod:`privnerf.fed.secure`),
    ``alpha_sum`` (the last round's ``sum_k alpha_k``) and ``loss_sum``.
Client → server (``FitRes``), under SecAgg+ (all arrays masked, the server sees only sums):
    phase ``grad``:  ``[dL_k/dg_j * c / B_j ...] + [L_k * c / B_L]``
    phase ``train``: ``[alpha_k g_kj * c / B_j ...] + [alpha_k * c / B_alpha]``, or with coverage weighting
                     ``[alpha_k m_k g_kj ...(grids), alpha_k g_kj ...(MLP), alpha_k m_k, alpha_k]`` where ``m_k``
                     ``(X, Y, Z)`` marks the voxels user k's training changed (the server learns only
                     ``sum_k alpha_k m_k``: how much weight touched each voxel, summed over users)
    ``num_examples = 1`` (weights travel masked inside the vector, never in the clear);
    metrics: ``clipped`` (values beyond their bound), ``train_time_s``, ``local_steps``.
Client → server without SecAgg (aggregator ``fednerf``, the paper's baseline; the server sees each update):
    ``[g_kj ...]``, ``num_examples`` = the client's pixel count.

Never sent: images, pixels, masks, the personal field, embeddings, appearance codes, ``alpha_k``, local losses.
``GLOBAL_KEYS`` lists exactly the arrays that leave a client; tests inspect real messages against it.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from privnerf.fields.encoding import regrid_values
from privnerf.fields.grid_field import GridField

GLOBAL_PREFIXES = ("density_grid.data", "feature_grid.data", "rgb_net.")
"""State-dict keys of the global grid field that are federated (everything else is personal or derived)."""

# Bounds: floors for the first round, and headroom over the last aggregate (see privnerf.fed.secure).
WEIGHT_FLOOR = {"density_grid.data": 64.0, "feature_grid.data": 64.0}
WEIGHT_FLOOR_DEFAULT = 2.0
WEIGHT_HEADROOM = 2.0
GRAD_FLOOR = 1.0
GRAD_HEADROOM = 8.0
LOSS_BOUND = 64.0
ALPHA_BOUND = 1.0


def global_keys(field: GridField) -> list[str]:
    """The federated state-dict keys of ``field``, in message order."""
    return [k for k in field.state_dict() if k.startswith(GLOBAL_PREFIXES)]


def global_arrays(field: GridField) -> list[np.ndarray]:
    sd = field.state_dict()
    return [sd[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in global_keys(field)]


def global_tensors(field: GridField) -> list[torch.Tensor]:
    """The federated parameters themselves (for gradients), in message order."""
    named = dict(field.named_parameters())
    return [named[k] for k in global_keys(field)]


def check_arrays(field: GridField, arrays: list[np.ndarray], what: str) -> None:
    """Raise ``ValueError`` naming the problem if ``arrays`` cannot be the global field's parameters."""
    keys = global_keys(field)
    if len(arrays) != len(keys):
        raise ValueError(f"{what}: {len(arrays)} arrays, expected {len(keys)} ({', '.join(keys)})")
    sd = field.state_dict()
    grid_res = None
    for k, a in zip(keys, arrays):
        a = np.asarray(a)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: {k} has {int(np.sum(~np.isfinite(a)))} NaN/Inf values")
        if k.endswith("grid.data"):
            if a.ndim != 4 or a.shape[-1] != sd[k].shape[-1]:
                raise ValueError(f"{what}: {k} has shape {a.shape}, expected (X, Y, Z, {sd[k].shape[-1]})")
            if grid_res is not None and a.shape[:3] != grid_res:
                raise ValueError(f"{what}: grids disagree on resolution ({grid_res} vs {a.shape[:3]})")
            grid_res = a.shape[:3]
        elif tuple(a.shape) != tuple(sd[k].shape):
            raise ValueError(f"{what}: {k} has shape {a.shape}, expected {tuple(sd[k].shape)}")


@torch.no_grad()
def load_global(field: GridField, arrays: list[np.ndarray]) -> None:
    """Set the global field's parameters (grids take the arrays' resolution: the server grows them)."""
    check_arrays(field, arrays, "global parameters")
    named = dict(field.named_parameters())
    for k, a in zip(global_keys(field), arrays):
        t = torch.from_numpy(np.asarray(a, dtype=np.float32))
        if k.endswith("grid.data"):
            grid = field.density_grid if k.startswith("density") else field.feature_grid
            if tuple(grid.data.shape) != tuple(t.shape):
                grid.data = torch.nn.Parameter(t.clone().to(grid.data.device))
                grid._grad = None
                grid._touched = None
                continue
        named[k].data.copy_(t)


def weight_bounds(field: GridField, previous: list[np.ndarray] | None) -> list[float]:
    from privnerf.fed.secure import next_bounds

    floors = [WEIGHT_FLOOR.get(k, WEIGHT_FLOOR_DEFAULT) for k in global_keys(field)]
    return next_bounds(previous, floors, WEIGHT_HEADROOM) + [ALPHA_BOUND]


def is_grid_key(key: str) -> bool:
    return key.endswith("grid.data")


def coverage_weighted_bounds(field: GridField, previous: list[np.ndarray] | None) -> list[float]:
    """Bounds for ``[alpha m g (grids), alpha g (MLP), alpha m, alpha]``."""
    b = weight_bounds(field, previous)
    return b[:-1] + [ALPHA_BOUND, ALPHA_BOUND]


def grad_bounds(field: GridField, previous_sum: list[np.ndarray] | None) -> list[float]:
    from privnerf.fed.secure import next_bounds

    floors = [GRAD_FLOOR] * len(global_keys(field))
    return next_bounds(previous_sum, floors, GRAD_HEADROOM) + [LOSS_BOUND]


def encode_bounds(bounds: list[float]) -> str:
    return json.dumps([float(b) for b in bounds])


def decode_bounds(text: str, expected: int) -> list[float]:
    b = json.loads(text)
    if not isinstance(b, list) or len(b) != expected:
        raise ValueError(f"bounds: expected a list of {expected} numbers, got {text[:80]!r}")
    return [float(x) for x in b]


def match_shape(prev: np.ndarray, now_shape: tuple[int, ...]) -> np.ndarray | None:
    """``prev`` as is if it has ``now_shape``; a grid ``(X, Y, Z, C)`` regridded to that resolution (trilinear,
    same box); otherwise ``None``."""
    if np.shape(prev) == tuple(now_shape):
        return prev
    if np.ndim(prev) == 4 and len(now_shape) == 4 and np.shape(prev)[-1] == now_shape[-1]:
        return regrid_values(torch.from_numpy(np.asarray(prev, np.float32)), tuple(now_shape[:3])).numpy()
    return None
