"""JacobiNeRF's label propagation from clicks (the sparse 2D setting of the official code; spec B.6).

For each label ``c`` the Jacobians of the clicked pixels' colours (with respect to the last colour layer,
:mod:`privnerf.semantics.jacobian`) are averaged into a direction ``G_c``. Perturbing the layer along
``G_c`` changes the colour of every ray whose head activation is aligned with the clicks' (the
"resonance"); the response map of a view is ``R_c = mean_ch |C(W + t G_c) - C(W)|``, exact here because the
colour is linear in ``W``, so a view is rendered once and every label costs a matrix product. Each map is
post-processed as the code does: clipped at 0.8, blurred 3x3 (Gaussian), divided by its maximum over the
view, and zeroed when ``std < 0.05`` and ``mean < 0.01`` (the label is absent from the view); the pixel
takes the label of the largest response after a softmax over labels.

``clicks.json``::

    {"clicks": [{"view": "train_0000", "pixel": [u, v], "label": "ball"}, ...]}

``view`` is a training view's name (or its index), ``pixel`` the column and row, ``label`` any string
(several clicks may share one). Metrics (when the evaluated views have semantic ground truth and the labels
are its class names): confusion-matrix mIoU, total and class-average pixel accuracy, ignoring void
(background, id 0) and ground-truth classes no click names, as the paper's evaluation does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from privnerf.semantics.jacobian import DEFAULT_VIEW, check_view
from privnerf.semantics.shaping import pixel_jacobians, pixel_rays, render_composited


@dataclass
class Click:
    view: int
    u: int
    v: int
    label: str


def read_clicks(path: Path, scene) -> list[Click]:
    """Parse and check ``clicks.json`` against the scene's training views; a clear error names the file and
    the click."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such clicks file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    items = doc.get("clicks") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f'{path}: expected {{"clicks": [{{"view": ..., "pixel": [u, v], "label": ...}}, ...]}}')
    names = list(scene.names or [])
    out = []
    for k, c in enumerate(items):
        where = f"{path}: click {k}"
        if not isinstance(c, dict) or not {"view", "pixel", "label"} <= set(c):
            raise ValueError(f"{where}: needs view, pixel and label")
        view = c["view"]
        if isinstance(view, str):
            if view not in names:
                raise ValueError(f"{where}: unknown view {view!r} (training views: {', '.join(names[:5])}, ...)")
            view = names.index(view)
        if not isinstance(view, int) or not 0 <= view < scene.num_views:
            raise ValueError(f"{where}: unknown view {c['view']!r} ({scene.num_views} training views)")
        px = c["pixel"]
        if not (isinstance(px, (list, tuple)) and len(px) == 2 and all(isinstance(x, int) for x in px)):
            raise ValueError(f"{where}: pixel must be [column, row] integers, got {px!r}")
        h, w = scene.hw(view)
        if not (0 <= px[0] < w and 0 <= px[1] < h):
            raise ValueError(f"{where}: pixel {px} lies outside view {view}'s {w}x{h} image")
        if not isinstance(c["label"], str) or not c["label"]:
            raise ValueError(f"{where}: label must be a non-empty string")
        out.append(Click(view, int(px[0]), int(px[1]), c["label"]))
    return out


def clicks_from_labels(scene, view: int = 0, per_class: int = 1, seed: int = 0, void: int = 0) -> list[Click]:
    """``per_class`` random pixels of every class (but void) present in a labelled training view (every pixel
    when ``per_class <= 0``: the dense setting): the paper's one-click protocol, the labels being ``scene.meta["classes"]`` names."""
    if scene.semantics is None:
        raise ValueError("the scene has no semantic labels to draw clicks from")
    sem = np.asarray(scene.semantics[view])
    names = scene.meta.get("classes") or [str(i) for i in range(int(sem.max()) + 1)]
    rng = np.random.default_rng(seed)
    out = []
    for cid in sorted(set(np.unique(sem).tolist()) - {void}):
        ys, xs = np.nonzero(sem == cid)
        picks = range(len(ys)) if per_class <= 0 else rng.choice(len(ys), size=min(per_class, len(ys)), replace=False)
        for j in picks:
            out.append(Click(view, int(xs[j]), int(ys[j]), names[cid]))
    return out


def write_clicks(clicks: list[Click], scene, path: Path) -> None:
    names = list(scene.names or [])
    doc = {"clicks": [{"view": names[c.view] if names else c.view, "pixel": [c.u, c.v], "label": c.label} for c in clicks]}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def label_directions(trainer, clicks: list[Click], view: str = DEFAULT_VIEW) -> tuple[list[str], torch.Tensor]:
    """The labels (in first-click order) and their mean Jacobians ``G`` ``(K, 3, width)`` (no jitter; the head
    at ``view``, :data:`privnerf.semantics.jacobian.VIEWS`)."""
    labels = list(dict.fromkeys(c.label for c in clicks))
    img = torch.tensor([c.view for c in clicks])
    u, v = torch.tensor([c.u for c in clicks]), torch.tensor([c.v for c in clicks])
    with torch.no_grad():
        jac = pixel_jacobians(trainer, img, u, v, jitter=False, view=view)
    G = torch.stack([jac[[i for i, c in enumerate(clicks) if c.label == lab]].mean(0) for lab in labels])
    return labels, G


@torch.no_grad()
def view_activations(trainer, c2w, intrinsics, h: int, w: int, chunk: int = 8192, with_depth: bool = False,
                     view: str = DEFAULT_VIEW):
    """Head activations ``(h, w, width)`` (at ``view``) and opacity ``(h, w)`` of one camera (deterministic
    samples); with ``with_depth`` also the ray distance ``(h, w)`` (``inf`` where empty)."""
    from privnerf.semantics.jacobian import head_activation

    out = _render_view(trainer, c2w, intrinsics, h, w, chunk, lambda comp, d: head_activation(trainer.field, comp, d, view))
    return (out["x"], out["opacity"], out["depth"]) if with_depth else (out["x"], out["opacity"])


@torch.no_grad()
def _render_view(trainer, c2w, intrinsics, h: int, w: int, chunk: int, head) -> dict[str, torch.Tensor]:
    """``head(composited (n, F), dirs (n, 3))`` per pixel of one camera as ``x``, with opacity and depth."""
    from privnerf.render.renderer import render_image_rays

    def fn(o, d):
        comp, r = render_composited(trainer, o, d)
        return {"x": head(comp, d), "opacity": r["opacity"], "depth": r["depth"]}

    return render_image_rays(fn, c2w, intrinsics, h, w, trainer.device, chunk)


def clip_blur(resp: torch.Tensor, clip: float = 0.8) -> torch.Tensor:
    """Response maps ``(K, h, w)`` clipped at ``clip`` and blurred by the official code's 3x3 Gaussian."""
    g = torch.tensor([1.0, 2.0, 1.0])
    kernel = (g[:, None] * g[None]) / 16.0
    return F.conv2d(F.pad(resp.clamp(max=clip)[:, None], (1, 1, 1, 1), mode="replicate"), kernel[None, None])[:, 0]


def postprocess(resp: torch.Tensor, clip: float = 0.8) -> torch.Tensor:
    """The official code's treatment of one view's response maps ``(K, h, w)``: clip, 3x3 Gaussian blur,
    divide by the view maximum, zero a label whose map has ``std < 0.05`` and ``mean < 0.01``."""
    r = clip_blur(resp, clip)
    r = r / r.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    absent = (r.flatten(1).std(1) < 0.05) & (r.flatten(1).mean(1) < 0.01)
    r[absent] = 0.0
    return r


def view_responses(a: torch.Tensor, opacity: torch.Tensor, G: torch.Tensor, t: float = 0.1) -> torch.Tensor:
    """Raw responses ``(n, h, w)`` of one view (activations ``(h, w, width)``, opacity ``(h, w)``) to ``n``
    perturbation directions ``G`` ``(n, 3, width)``."""
    from privnerf.semantics.jacobian import perturbed_response

    h, w = opacity.shape
    flat_a, flat_o = a.reshape(-1, a.shape[-1]), opacity.reshape(-1)
    return torch.stack([perturbed_response(flat_a, flat_o, g, t).reshape(h, w) for g in G])


def propagate_view(a: torch.Tensor, opacity: torch.Tensor, G: torch.Tensor, t: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Label index map ``(h, w)`` and post-processed responses ``(K, h, w)`` of one view from its activations
    ``(h, w, width)``, opacity ``(h, w)`` and the label directions ``G`` ``(K, 3, width)``."""
    r = postprocess(view_responses(a, opacity, G, t))
    return torch.softmax(r, dim=0).argmax(0), r


def segmentation_metrics(pred: list[np.ndarray], gt: list[np.ndarray], classes: list[int], void: int = 0) -> dict:
    """Confusion-matrix mIoU, total and class-average accuracy over the pixels whose ground truth is one of
    ``classes`` (others, void included, are ignored); ``pred`` holds class ids."""
    idx = {c: k for k, c in enumerate(classes)}
    k = len(classes)
    conf = np.zeros((k, k), np.int64)
    for p, g in zip(pred, gt):
        g = np.asarray(g).reshape(-1)
        p = np.asarray(p).reshape(-1)
        keep = np.isin(g, classes) & (g != void)
        gi = np.vectorize(idx.get)(g[keep]) if keep.any() else np.zeros(0, np.int64)
        pi = np.array([idx.get(int(x), -1) for x in p[keep]]) if keep.any() else np.zeros(0, np.int64)
        ok = pi >= 0
        np.add.at(conf, (gi[ok], pi[ok]), 1)
    tp = np.diag(conf).astype(np.float64)
    gt_n, pred_n = conf.sum(1), conf.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt_n + pred_n - tp)
        acc_c = tp / gt_n
    return {"miou": float(np.nanmean(iou)), "total_accuracy": float(tp.sum() / max(conf.sum(), 1)),
            "class_accuracy": float(np.nanmean(acc_c)), "per_class_iou": [None if np.isnan(x) else float(x) for x in iou],
            "classes": classes, "pixels": int(conf.sum())}




def view_features(trainer, c2w, intrinsics, h: int, w: int, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Composited features ``(h, w, F)`` and opacity ``(h, w)`` of one camera (the semantic head's input)."""
    out = _render_view(trainer, c2w, intrinsics, h, w, chunk, lambda comp, d: comp)
    return out["x"], out["opacity"]


def train_semantic_head(trainer, clicks: list[Click], labels: list[str], steps: int = 500, seed: int = 0) -> torch.nn.Module:
    """The Semantic-NeRF-style baseline at the same clicks: a small MLP from a ray's composited features to
    label logits (Semantic-NeRF's semantic branch, deferred like our colour head), trained by cross-entropy
    on the clicked pixels only, the field frozen."""
    img = torch.tensor([c.view for c in clicks])
    o, d = pixel_rays(trainer, img, torch.tensor([c.u for c in clicks]), torch.tensor([c.v for c in clicks]))
    with torch.no_grad():
        x, _ = render_composited(trainer, o, d)
    y = torch.tensor([labels.index(c.label) for c in clicks])
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, len(labels)))
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def shaped_view(run: Path) -> str:
    """The Jacobian view a run was shaped with (``shaping.json``); for a run that was not shaped, the default of
    :class:`~privnerf.semantics.shaping.ShapingConfig` (the two views score alike on unshaped fields)."""
    from privnerf.semantics.shaping import ShapingConfig

    path = Path(run) / "shaping.json"
    if not path.exists():
        return ShapingConfig.jacobian_view
    try:
        return json.loads(path.read_text()).get("shaping", {}).get("jacobian_view", "ray")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]],
                   np.uint8)


def propagate_run(run: Path, clicks_path: Path, out: Path, split: str = "test", max_views: int | None = None,
                  t: float = 0.1, quiet: bool = False, view: str | None = None, aggregate: bool = False) -> dict:
    """``privnerf semantics propagate``: label every view of ``split`` from the clicks; writes DIR whole or
    not at all (:func:`~privnerf.data.io.atomic_directory`). ``view`` (``ray``/``zero``) defaults to the one
    the run was shaped with (its ``shaping.json``; the shaping default for an unshaped run). ``aggregate``: the clicks are one
    densely labelled view, and labels come from chosen seeds and a learned response aggregator (the paper's
    dense setting, :mod:`privnerf.semantics.aggregator`)."""
    import imageio.v3 as iio
    import trimesh
    from tqdm.auto import tqdm

    from privnerf.cli.train import load_split
    from privnerf.data.cameras import image_rays
    from privnerf.data.io import atomic_directory
    from privnerf.train.trainer import trainer_from_checkpoint

    run, out = Path(run), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out")
    trainer = trainer_from_checkpoint(run)
    trainer.scene = load_split(trainer.cfg, "train")
    clicks = read_clicks(clicks_path, trainer.scene)
    views = load_split(trainer.cfg, split)
    n = views.num_views if max_views is None else min(max_views, views.num_views)
    if view is None:
        view = shaped_view(run)
    check_view(view)
    labels, G = label_directions(trainer, clicks, view)
    dense = None
    if aggregate:
        from privnerf.semantics.aggregator import AggregatorConfig, DensePropagation, clicks_label_map

        lab_map = clicks_label_map(clicks, labels, *trainer.scene.hw(clicks[0].view))
        dense = DensePropagation(trainer, view, AggregatorConfig(t=t)).fit(clicks[0].view, lab_map, len(labels))
    preds, pts, cols = [], [], []
    names = views.names or [f"{split}_{i:04d}" for i in range(n)]
    with atomic_directory(out) as partial:
        (partial / "labels").mkdir()
        (partial / "overlays").mkdir()
        for i in tqdm(range(n), disable=quiet, desc="propagate"):
            h, w = views.hw(i)
            a, op, depth = view_activations(trainer, views.c2w[i], views.intrinsics[i], h, w, with_depth=True,
                                            view=view)
            lab = (dense.predict(views.c2w[i], views.intrinsics[i], h, w) if dense is not None
                   else propagate_view(a, op, G, t)[0]).numpy()
            preds.append(lab)
            colour = PALETTE[lab % len(PALETTE)]
            iio.imwrite(partial / "labels" / f"{names[i]}.png", colour)
            np.save(partial / "labels" / f"{names[i]}.npy", lab.astype(np.int16))
            photo = (np.clip(np.asarray(views.images[i], np.float32), 0, 1) * 255).astype(np.float32)
            alpha = 0.55 * op.numpy()[..., None]
            iio.imwrite(partial / "overlays" / f"{names[i]}.png", (photo * (1 - alpha) + colour * alpha).astype(np.uint8))
            o, d, _ = image_rays(torch.as_tensor(np.asarray(views.c2w[i])).float(), torch.as_tensor(np.asarray(views.intrinsics[i])).float(), h, w)
            keep = (op.reshape(-1) > 0.5) & torch.isfinite(depth.reshape(-1))
            pts.append((o + depth.reshape(-1, 1) * d)[keep].numpy())
            cols.append(colour.reshape(-1, 3)[keep.numpy()])
        if pts:
            p, c = np.concatenate(pts), np.concatenate(cols)
            if len(p) > 200_000:
                pick = np.random.default_rng(0).choice(len(p), 200_000, replace=False)
                p, c = p[pick], c[pick]
            trimesh.PointCloud(p, colors=np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], 1)).export(partial / "points.ply")
        doc = {"labels": labels, "colours": {lab: PALETTE[k % len(PALETTE)].tolist() for k, lab in enumerate(labels)},
               "clicks": [vars(c) for c in clicks], "split": split, "views": names[:n], "t": t, "run": str(run),
               "jacobian_view": view, "setting": "dense (seeds + aggregator)" if dense is not None else "clicks"}
        classes = (views.meta or {}).get("classes")
        if views.semantics is not None and classes and all(lab in classes for lab in labels):
            cls = np.array([classes.index(lab) for lab in labels])
            doc["metrics"] = segmentation_metrics([cls[p] for p in preds], views.semantics[:n], cls.tolist())
        (partial / "propagation.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


__all__ = ["PALETTE", "Click", "clicks_from_labels", "label_directions", "postprocess", "propagate_run",
           "clip_blur", "propagate_view", "read_clicks", "segmentation_metrics", "shaped_view", "train_semantic_head", "view_activations",
           "view_features", "view_responses", "write_clicks"]
