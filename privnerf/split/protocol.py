"""What crosses the split-learning boundary, and its wire format.

This module is the whole privacy surface of split training: every message either party sends is one of
the kinds below, encoded by :func:`encode` and checked by :func:`decode` against :data:`SCHEMA` before
anything else reads it.

Client → server (the client holds the images, the head and the loss):

* ``setup``: the training configuration and the cameras (poses, intrinsics, image sizes, scene bounds) of
  the training views and of the views it will ask renders for. No pixels.
* ``forward``: a batch of rays *as coordinates*: ``view (n,)`` int32, ``u (n,)``, ``v (n,)`` int32 pixel
  column/row, plus ``elapsed`` training seconds (the server's schedules follow it) and ``train`` (1: a
  training step on the training cameras, keeping the graph; 0: a render of the render cameras, no gradient).
* ``backward``: ``grad (m, C)`` float32, the (defended) loss gradient at the cut activation of the last
  training ``forward``.
* ``checkpoint``: ask the server to save its state now (both parties checkpoint at the same step).

Server → client:

* ``setup_ok``: what the client needs to pair its head with the server part: cut channels, density shift,
  the step the server is at (0, or the resumed step) and the field's working ``box`` (2 x 3).
* ``activations``: ``h (m, C)`` float32 cut activation per shaded sample, the sample packing ``ray (m,)``
  int32, ``t (m,)``, ``delta (m,)`` float32, the unit ray directions ``dirs (n, 3)`` float32 and the samples'
  working-box positions ``xs`` float32: ``(m, 3)`` when the client's head is keyed
  (``--field.grid.key-cells``: it decodes by position), else ``(0, 3)``. All of it is the server's own.
* ``ack``: ``step`` after a backward or checkpoint.
* ``error``: ``message`` (a refused request; the connection stays usable).

Wire format: ``b"PNSL"``, a little-endian uint32 header length, a JSON header ``{"kind", "meta", "arrays":
[{"name", "dtype", "shape"}]}``, then each array's bytes in order (C order). Everything is checked: magic,
header, kind, the exact array names, dtypes and ranks of the kind, sizes against the bytes present and
against ``max_bytes``. A float array must be finite.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"PNSL"
DEFAULT_MAX_BYTES = 1 << 30
"""Largest message either side accepts (1 GiB: a 4096-ray batch of lego 400 is ~10 MB)."""

# kind -> (meta keys, {array name: (dtype, ndim)})
SCHEMA: dict[str, tuple[set[str], dict[str, tuple[str, int]]]] = {
    "setup": ({"config", "cameras", "resume"}, {}),
    "setup_ok": ({"cut_channels", "shift", "step", "box"}, {}),
    "forward": ({"elapsed", "train"}, {"view": ("int32", 1), "u": ("int32", 1), "v": ("int32", 1)}),
    "activations": ({"step"}, {"h": ("float32", 2), "ray": ("int32", 1), "t": ("float32", 1),
                               "delta": ("float32", 1), "dirs": ("float32", 2), "xs": ("float32", 2)}),
    "backward": ({"step"}, {"grad": ("float32", 2)}),
    "checkpoint": ({"step"}, {}),
    "ack": ({"step"}, {}),
    "error": ({"message"}, {}),
}

CLIENT_KINDS = ("setup", "forward", "backward", "checkpoint")
SERVER_KINDS = ("setup_ok", "activations", "ack", "error")


class ProtocolError(ValueError):
    """A message that is malformed, of the wrong kind, or too large."""


def encode(kind: str, meta: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """Message ``kind`` with JSON-able ``meta`` and numpy ``arrays`` → bytes (validated like :func:`decode`)."""
    meta = dict(meta or {})
    arrays = dict(arrays or {})
    _check(kind, meta, {k: (str(v.dtype), v.shape) for k, v in arrays.items()}, "outgoing message")
    layout = []
    blobs = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        layout.append({"name": name, "dtype": str(a.dtype), "shape": list(a.shape)})
        blobs.append(memoryview(a).cast("B") if a.size else b"")  # no copy until the join
    header = json.dumps({"kind": kind, "meta": meta, "arrays": layout}).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])


def decode(data: bytes, expect: tuple[str, ...] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
           source: str = "message") -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Bytes → ``(kind, meta, arrays)``; raises :class:`ProtocolError` naming ``source`` and the problem."""
    if len(data) > max_bytes:
        raise ProtocolError(f"{source}: {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    if len(data) < 8 or data[:4] != MAGIC:
        raise ProtocolError(f"{source}: not a privnerf split message (bad magic)")
    (hlen,) = struct.unpack("<I", data[4:8])
    if 8 + hlen > len(data):
        raise ProtocolError(f"{source}: header length {hlen} runs past the end of the message")
    try:
        header = json.loads(data[8 : 8 + hlen])
        kind, meta, layout = header["kind"], header["meta"], header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"{source}: malformed header ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(layout, list):
        raise ProtocolError(f"{source}: malformed header (meta must be an object, arrays a list)")
    if expect is not None and kind not in expect:
        raise ProtocolError(f"{source}: a {kind!r} message where one of {list(expect)} was expected")
    specs = {}
    for item in layout:
        try:
            name, dtype, shape = item["name"], np.dtype(item["dtype"]), tuple(int(s) for s in item["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{source}: malformed array entry {item!r} ({exc})") from None
        if any(s < 0 for s in shape):
            raise ProtocolError(f"{source}: array {name!r} has a negative dimension {shape}")
        specs[name] = (dtype, shape)
    _check(kind, meta, {k: (str(d), s) for k, (d, s) in specs.items()}, source)
    arrays: dict[str, np.ndarray] = {}
    offset = 8 + hlen
    # one copy of the message makes every array writable (torch.from_numpy then needs no copy of its own)
    buf = bytearray(data) if specs else data
    for name, (dtype, shape) in specs.items():
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(data):
            raise ProtocolError(f"{source}: array {name!r} {shape} needs {size:,} bytes, only "
                                f"{len(data) - offset:,} are left")
        a = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(a).all():
            raise ProtocolError(f"{source}: array {name!r} holds NaN or Inf")
        arrays[name] = a
        offset += size
    if offset != len(data):
        raise ProtocolError(f"{source}: {len(data) - offset} trailing bytes after the arrays")
    return kind, meta, arrays


def _check(kind: str, meta: dict, arrays: dict[str, tuple[str, tuple]], source: str) -> None:
    if kind not in SCHEMA:
        raise ProtocolError(f"{source}: unknown message kind {kind!r}")
    meta_keys, array_spec = SCHEMA[kind]
    if set(meta) != meta_keys:
        raise ProtocolError(f"{source}: {kind!r} meta keys {sorted(meta)} != {sorted(meta_keys)}")
    if set(arrays) != set(array_spec):
        raise ProtocolError(f"{source}: {kind!r} arrays {sorted(arrays)} != {sorted(array_spec)}")
    for name, (dtype, shape) in arrays.items():
        want_dtype, want_ndim = array_spec[name]
        if dtype != want_dtype or len(shape) != want_ndim:
            raise ProtocolError(f"{source}: {kind!r} array {name!r} is {dtype}{list(shape)}, "
                                f"expected {want_dtype} with {want_ndim} dimension(s)")


def error_message(text: str) -> bytes:
    return encode("error", {"message": text})
