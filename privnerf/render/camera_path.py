"""Camera paths for videos: an orbit around 360° scenes, a small circle for forward-facing ones."""

from __future__ import annotations

import numpy as np

from privnerf.data.scene import Scene


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``(4, 4)`` OpenGL camera-to-world looking from ``eye`` at ``target`` (camera -Z towards the target)."""
    back = eye - target
    back = back / np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-8:  # looking straight along up: pick any right
        right = np.cross(np.array([1.0, 0.0, 0.0]), back)
    right = right / np.linalg.norm(right)
    cam_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, back, eye
    return m.astype(np.float32)


def orbit_path(scene: Scene, n_frames: int = 60) -> np.ndarray:
    """``(n_frames, 4, 4)`` poses circling the scene at the training cameras' mean height and distance."""
    c2w = scene.c2w.astype(np.float64)
    pos = c2w[:, :3, 3]
    up = c2w[:, :3, 1].mean(0)
    up = up / np.linalg.norm(up)
    if scene.scene_type == "forward":
        mean_pos = pos.mean(0)
        fwd = -c2w[:, :3, 2].mean(0)
        fwd = fwd / np.linalg.norm(fwd)
        right = np.cross(fwd, up)
        right /= np.linalg.norm(right)
        radius = 0.5 * np.linalg.norm(pos - mean_pos, axis=1).mean() + 1e-3
        target = mean_pos + fwd * (scene.near + scene.far) * 0.25
        frames = []
        for a in np.linspace(0, 2 * np.pi, n_frames, endpoint=False):
            eye = mean_pos + radius * (np.cos(a) * right + np.sin(a) * up)
            frames.append(look_at(eye, target, up))
        return np.stack(frames)
    centre = (scene.aabb[0] + scene.aabb[1]).astype(np.float64) / 2
    rel = pos - centre
    height = float((rel @ up).mean())
    flat = rel - np.outer(rel @ up, up)
    radius = float(np.linalg.norm(flat, axis=1).mean())
    e1 = flat[0] / max(np.linalg.norm(flat[0]), 1e-9)
    e2 = np.cross(up, e1)
    frames = []
    for a in np.linspace(0, 2 * np.pi, n_frames, endpoint=False):
        eye = centre + radius * (np.cos(a) * e1 + np.sin(a) * e2) + height * up
        frames.append(look_at(eye, centre, up))
    return np.stack(frames)
