"""A contact sheet: a few photos per user with the personal-content masks outlined, to see what was made."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from privnerf.data.scene import Scene

STATIC_OUTLINE = (255, 210, 0)
TRANSIENT_OUTLINE = (0, 220, 255)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask ``(H, W)``: inside the mask with a 4-neighbour outside it."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _tile(image: np.ndarray, label: np.ndarray, size: int) -> Image.Image:
    rgb = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(rgb)
    lab = Image.fromarray(label)
    scale = size / max(im.size)
    if scale < 1:  # shrink first, then outline at the tile's resolution so lines stay one pixel wide
        new = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im, lab = im.resize(new, Image.BOX), lab.resize(new, Image.NEAREST)
    arr = np.array(im)
    lab = np.array(lab)
    transient = lab == 255
    static = (lab > 0) & ~transient
    arr[outline(static)] = STATIC_OUTLINE
    arr[outline(transient)] = TRANSIENT_OUTLINE
    return Image.fromarray(arr)


def contact_sheet(train: Scene, info: dict, per_user: int = 3, tile: int = 128, blocks_per_row: int = 4) -> Image.Image:
    """Up to ``per_user`` photos of every user (evenly spread over their views), masks outlined
    (yellow: the user's static person, cyan: transient people), captioned with the user's numbers."""
    by_user: dict[int, list[int]] = {}
    for i, m in enumerate(train.frame_meta):
        by_user.setdefault(int(m["user_id"]), []).append(i)
    users = sorted(by_user)
    caption_h, pad = 16, 6
    block_w = per_user * tile + (per_user - 1) * 2
    block_h = tile + caption_h
    rows = (len(users) + blocks_per_row - 1) // blocks_per_row
    sheet = Image.new("RGB", (blocks_per_row * (block_w + pad) + pad, rows * (block_h + pad) + pad + 18), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"{len(users)} users, {train.num_views} photos; yellow = user's static person, "
                        f"cyan = transient people", fill=(0, 0, 0))
    stats = {u["user_id"]: u for u in info.get("users", [])}
    for b, u in enumerate(users):
        x0 = pad + (b % blocks_per_row) * (block_w + pad)
        y0 = 18 + pad + (b // blocks_per_row) * (block_h + pad)
        frames = by_user[u]
        pick = [frames[j] for j in np.linspace(0, len(frames) - 1, min(per_user, len(frames))).round().astype(int)]
        for j, f in enumerate(pick):
            sheet.paste(_tile(train.images[f], np.asarray(train.masks[f], np.uint8), tile), (x0 + j * (tile + 2), y0 + caption_h))
        s = stats.get(u, {})
        text = f"user {u}: {len(frames)} photos, {100 * s.get('personal_fraction', 0):.1f}% personal"
        if s.get("occlusion") not in (None, "normal"):
            text += f" ({s['occlusion']})"
        draw.text((x0, y0 + 2), text, fill=(0, 0, 0))
    return sheet
