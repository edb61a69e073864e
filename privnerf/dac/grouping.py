"""Split a scene's training views into K groups, one expert each (DaC phase 1).

Two rules, both deterministic, both covering every view exactly once:

* ``sector`` (DaC's code for NeRF-synthetic): a camera goes to the azimuth sector whose unit direction best
  matches its horizontal position around the scene centre (largest dot product). The code's centres are
  90/270° for 2 groups, 60/180/300° for 3, 45/135/225/315° for 4, 36/108/180/252/324° for 5; all are
  ``(180 + 360 k) / K`` degrees, which is the rule used for every K. For a ``bounded`` scene the plane is
  world (x, y) around the box centre (Blender's z is up). A forward-facing scene (LLFF) has every camera on
  one side, so azimuth around the scene centre is degenerate; there the plane is the one the camera centres
  spread in (their two principal axes) and the angle is taken around the cameras' mean position.
* ``similarity`` (DaC's Tanks & Temples groups, inferred Louvain): a k-nearest-neighbour graph of views whose
  edge weight is the cosine between optical axes times a falloff with camera distance (a covisibility proxy
  that reads no pixels), split by Louvain (networkx, fixed seed) and then brought to exactly K groups:
  more communities are merged pairwise along the strongest links (relative to size), fewer are reached by
  raising Louvain's resolution.

Worked example (``sector``, K = 4): a camera at (x, y) = (1, 1) is at 45° and joins group 0 (centre 45°);
one at (-1, 0.1) is at 174°, nearest centre 135° (group 1) by 39° against 225° by 51°.
"""

from __future__ import annotations

import numpy as np

from privnerf.data.scene import Scene

RULES = ("sector", "similarity")


def sector_centres(k: int) -> np.ndarray:
    """Sector centre angles in degrees ``(k,)``: ``(180 + 360 i) / k`` (DaC's 2..5 split tables)."""
    return (180.0 + 360.0 * np.arange(k)) / k


def sector_of(azimuth_deg, k: int):
    """Sector index in ``0..k-1`` of azimuths in degrees (scalar or array): the sector whose centre
    (:func:`sector_centres`) is nearest, i.e. DaC's largest dot product; sector ``i`` spans
    ``[360 i / k, 360 (i + 1) / k)``. ``sector_of(100, 4) == 1``; ``sector_of(-10, 4) == 3``. One rule for
    the centralized groups and the federated aggregator's (:mod:`privnerf.fed.dac`)."""
    a = np.mod(np.asarray(azimuth_deg, dtype=np.float64), 360.0)
    return np.minimum((a * k / 360.0).astype(np.int64), k - 1)


def plane_coords(scene: Scene) -> np.ndarray:
    """Camera positions ``(n, 2)`` in the plane the sectors divide (see the module docstring)."""
    pos = scene.c2w[:, :3, 3].astype(np.float64)
    if scene.scene_type == "bounded":
        centre = (scene.aabb[0] + scene.aabb[1]) / 2
        return pos[:, :2] - centre[:2]
    mean = pos.mean(axis=0)
    x = pos - mean
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    # SVD signs are arbitrary: fix each axis so its largest component is positive (deterministic)
    axes = axes * np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])[:, None]
    return x @ axes.T


def sector_groups(scene: Scene, k: int) -> list[list[int]]:
    """Views grouped by azimuth sector: ``k`` lists of view indices (ascending)."""
    check_k(scene.num_views, k)
    xy = plane_coords(scene)
    label = sector_of(np.degrees(np.arctan2(xy[:, 1], xy[:, 0])), k)
    return finish(label, k, "sector")


def view_similarity(scene: Scene) -> np.ndarray:
    """``(n, n)`` view affinity in [0, 1]: cosine of optical axes (clamped at 0) times
    ``exp(-d / median d)`` of the camera centres' distance ``d``; zero diagonal."""
    fwd = -scene.c2w[:, :3, 2].astype(np.float64)
    fwd /= np.linalg.norm(fwd, axis=1, keepdims=True)
    pos = scene.c2w[:, :3, 3].astype(np.float64)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    scale = np.median(d[np.triu_indices(len(pos), 1)]) if len(pos) > 1 else 1.0
    sim = np.clip(fwd @ fwd.T, 0, None) * np.exp(-d / max(scale, 1e-12))
    np.fill_diagonal(sim, 0.0)
    return sim


def similarity_groups(scene: Scene, k: int, seed: int = 0, neighbours: int = 8) -> list[list[int]]:
    """Views grouped by Louvain communities of a k-NN view-similarity graph, merged/refined to ``k``."""
    import networkx as nx

    n = scene.num_views
    check_k(n, k)
    if k == 1:
        return [list(range(n))]
    sim = view_similarity(scene)
    nn_ = min(neighbours, n - 1)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i in range(n):
        for j in np.argsort(-sim[i], kind="stable")[:nn_]:
            if sim[i, j] > 0:
                g.add_edge(i, int(j), weight=float(sim[i, j]))
    comms = None
    for resolution in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        comms = [sorted(c) for c in nx.community.louvain_communities(g, weight="weight", resolution=resolution,
                                                                     seed=seed)]
        if len(comms) >= k:
            break
    if len(comms) < k:
        raise ValueError(f"similarity grouping found only {len(comms)} communities for --dac.groups {k}; "
                         "use fewer groups or --dac.grouping sector")
    comms.sort(key=lambda c: c[0])
    while len(comms) > k:  # merge the pair with the strongest link per member (average linkage)
        best, pair = -1.0, (0, 1)
        for a in range(len(comms)):
            for b in range(a + 1, len(comms)):
                link = sim[np.ix_(comms[a], comms[b])].mean()
                if link > best:
                    best, pair = link, (a, b)
        a, b = pair
        comms[a] = sorted(comms[a] + comms[b])
        del comms[b]
    label = np.empty(n, dtype=np.int64)
    for gi, c in enumerate(comms):
        label[c] = gi
    return finish(label, k, "similarity")


def check_k(num_views: int, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"--dac.groups must be a positive integer, got {k!r}")
    if k > num_views:
        raise ValueError(f"--dac.groups {k} exceeds the {num_views} training views (each group needs a view)")


def finish(label: np.ndarray, k: int, rule: str) -> list[list[int]]:
    groups = [np.flatnonzero(label == g).tolist() for g in range(k)]
    empty = [g for g, v in enumerate(groups) if not v]
    if empty:
        raise ValueError(f"--dac.grouping {rule} with {k} groups leaves group(s) {empty} without views "
                         "(the cameras do not spread over every sector); use fewer groups or another rule")
    return groups


def group_views(scene: Scene, k: int, rule: str = "sector", seed: int = 0) -> list[list[int]]:
    """``k`` disjoint groups of view indices covering ``scene``'s views, by ``rule`` (see the module)."""
    if rule == "sector":
        return sector_groups(scene, k)
    if rule == "similarity":
        return similarity_groups(scene, k, seed)
    raise ValueError(f"--dac.grouping must be one of {RULES}, got {rule!r}")


def owner_of(groups: list[list[int]], num_views: int) -> np.ndarray:
    """``(num_views,)`` group index of each view."""
    owner = np.full(num_views, -1, dtype=np.int64)
    for g, views in enumerate(groups):
        owner[views] = g
    if (owner < 0).any():
        raise ValueError(f"views {np.flatnonzero(owner < 0).tolist()} belong to no group")
    return owner


def assign_views(scene: Scene, groups: list[list[int]], other: Scene) -> list[list[int]]:
    """Views of ``other`` (e.g. the test split) given to the group of their most similar view of ``scene``
    (:func:`view_similarity` across the two sets): ``len(groups)`` lists, possibly empty."""
    both = Scene(images=[np.zeros((1, 1, 3), np.float32)] * (scene.num_views + other.num_views),
                 c2w=np.concatenate([scene.c2w, other.c2w]),
                 intrinsics=np.concatenate([scene.intrinsics, other.intrinsics]), near=scene.near, far=scene.far,
                 aabb=scene.aabb, scene_type=scene.scene_type)
    sim = view_similarity(both)[scene.num_views:, :scene.num_views]
    owner = owner_of(groups, scene.num_views)[np.argmax(sim, axis=1)]
    return [np.flatnonzero(owner == g).tolist() for g in range(len(groups))]
