"""White-box ownership signatures (IPR-NeRF, after DeepIPR's sign loss): an owner's bits in the signs of
chosen weights, embedded while training, verified with the owner's key.

**Where the bits live (the carrier).** The signs of the entries of the colour head's linear weights
(``rgb_net``: ``Linear(F + PE, W)``, ``Linear(W, W)``, ``Linear(W, 3)``; 6,784 entries at the default
12 / 64 / 2 / 4). Each entry is the scale of one input into one unit, the per-channel scale ``gamma`` of a
normalisation layer (the paper's carrier) taken one input at a time. Why not the grids: the density and
feature grids are resampled when the grid grows and when its box shrinks (trilinear re-gridding), their
voxels are pruned by the occupancy grid, and the same index means another place after each; the head is
untouched by all three. Why not a ``gamma`` per hidden channel: 128 channels give 20 federated owners six
bits each, and six bits match by chance once in 64 (the bar is a false-positive probability below 1e-9,
which needs at least 30 bits per owner).

**Keys.** A key file (JSON, :func:`write_key`) holds the owner's name, a 256-bit secret, the number of bits,
the owner's slot among ``slots`` owners, the carrier's size, and ``commitment`` = SHA-256 of the secret
(publish it before training: a key produced later cannot match a commitment published earlier). Positions
and bits are derived from the secret, never stored: the carrier's positions are shuffled by a public
permutation and cut into ``slots`` equal blocks, so owners in different slots have disjoint positions by
construction; inside its block the secret picks the owner's positions and its bits (SHA-256 in counter
mode). A forger who reads the model's signs still has to find a secret whose derived bits match them:
one chance in ``2 ** bits`` per try.

**Loss** (DeepIPR's ``sign_loss.py``): ``weight * sum_i max(0, margin - b_i w_i)`` over the owner's
positions, added to the training loss; the bits are in place when every signed weight is past the margin.

**Verification.** Bit accuracy, the probability that a model without the signature matches at least as many
bits by chance (binomial tail at one half), and a verdict: the owner's when that probability is below
``1e-9``.

Example::

    >>> key = new_key("alice", bits=64, carrier_size=6784, seed=0)
    >>> idx, bits = key_positions(key)
    >>> idx.shape, bits.shape, set(bits.tolist()) <= {-1.0, 1.0}
    ((64,), (64,), True)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privnerf.data.errors import SceneError

KEY_FORMAT = "privnerf-signature-key/1"
PUBLIC_SEED = 0x1B5E_6A7
"""Seed of the public permutation that cuts the carrier into slots (everyone derives the same blocks)."""
FALSE_POSITIVE = 1e-9
"""A claim is accepted when a model without the signature would match this well with at most this
probability."""


@dataclass(frozen=True)
class SignatureKey:
    owner: str
    secret: str
    """64 hex digits (256 bits). The only secret part."""
    bits: int
    slot: int
    slots: int
    carrier_size: int

    @property
    def commitment(self) -> str:
        """SHA-256 of the secret, hex: what the owner publishes before training."""
        return hashlib.sha256(bytes.fromhex(self.secret)).hexdigest()


def new_key(owner: str, bits: int = 64, slot: int = 0, slots: int = 1, carrier_size: int = 6784,
            seed: int | None = None) -> SignatureKey:
    """A fresh key (``seed`` for reproducible tests and benchmarks only; ``None`` uses the OS's randomness)."""
    if seed is None:
        secret = secrets.token_hex(32)
    else:
        secret = hashlib.sha256(f"privnerf-test-key:{owner}:{seed}".encode()).hexdigest()
    key = SignatureKey(owner, secret, int(bits), int(slot), int(slots), int(carrier_size))
    check_key(key, "new key")
    return key


def check_key(key: SignatureKey, where: str) -> None:
    """``ValueError`` naming ``where`` and the first problem."""
    try:
        raw = bytes.fromhex(key.secret)
    except ValueError:
        raise ValueError(f"{where}: secret is not hex") from None
    if len(raw) != 32:
        raise ValueError(f"{where}: secret must be 32 bytes (64 hex digits), got {len(raw)}")
    if key.slots < 1 or not 0 <= key.slot < key.slots:
        raise ValueError(f"{where}: slot {key.slot} of {key.slots} slots")
    block = key.carrier_size // key.slots
    if key.bits < 1 or key.bits > block:
        raise ValueError(f"{where}: {key.bits} bits do not fit a slot of {block} carrier positions "
                         f"({key.carrier_size} positions, {key.slots} slots)")


def write_key(key: SignatureKey, path: Path) -> Path:
    """Write ``key`` as JSON (mode 0600: the secret is in it)."""
    from privnerf.train.checkpoint import atomic_write_text

    doc = {"format": KEY_FORMAT, "owner": key.owner, "secret": key.secret, "bits": key.bits, "slot": key.slot,
           "slots": key.slots, "carrier": "rgb_net weight signs", "carrier_size": key.carrier_size,
           "commitment": key.commitment}
    path = Path(path)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    path.chmod(0o600)
    return path


def read_key(path: Path) -> SignatureKey:
    """A key file (:func:`write_key`); any problem is a :class:`SceneError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "no key file here")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneError(path, f"not a JSON key file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise SceneError(path, f"not a signature key (expected format {KEY_FORMAT!r})")
    try:
        key = SignatureKey(str(doc["owner"]), str(doc["secret"]), int(doc["bits"]), int(doc["slot"]),
                           int(doc["slots"]), int(doc["carrier_size"]))
        check_key(key, "key")
    except (KeyError, TypeError, ValueError) as e:
        raise SceneError(path, f"bad key: {e}") from None
    if "commitment" in doc and doc["commitment"] != key.commitment:
        raise SceneError(path, "the commitment does not match the secret (the file was altered)")
    return key


def _stream(secret: str, label: str, n_bytes: int) -> bytes:
    """SHA-256 in counter mode over the secret: ``n_bytes`` pseudo-random bytes for ``label``."""
    out, i = b"", 0
    raw = bytes.fromhex(secret)
    while len(out) < n_bytes:
        out += hashlib.sha256(raw + label.encode() + i.to_bytes(8, "big")).digest()
        i += 1
    return out[:n_bytes]


def slot_block(carrier_size: int, slot: int, slots: int) -> np.ndarray:
    """The carrier positions of ``slot`` (a public permutation cut into ``slots`` equal blocks)."""
    perm = np.random.default_rng(PUBLIC_SEED).permutation(carrier_size)
    block = carrier_size // slots
    return np.sort(perm[slot * block:(slot + 1) * block])


def key_positions(key: SignatureKey) -> tuple[np.ndarray, np.ndarray]:
    """The key's carrier positions ``(bits,)`` (int64) and bits ``(bits,)`` (float32, +-1), derived from its
    secret inside its slot's block."""
    block = slot_block(key.carrier_size, key.slot, key.slots)
    seed = int.from_bytes(_stream(key.secret, "positions", 16), "big")
    idx = np.random.default_rng(seed).choice(block, size=key.bits, replace=False)
    raw = np.unpackbits(np.frombuffer(_stream(key.secret, "bits", (key.bits + 7) // 8), np.uint8))[: key.bits]
    return idx.astype(np.int64), (raw.astype(np.float32) * 2 - 1)


CARRIER_NAME = re.compile(r"rgb_net\.(\d+)\.weight")
"""State-dict names of the carrier's arrays: the colour head's linear weights (the layer index orders them)."""


def carrier_order(names: list[str], ndims: list[int] | None = None) -> list[int]:
    """Indices into ``names`` (state-dict or message key names) of the carrier's arrays, in carrier order; the
    one rule the field, a state dict and a federated upload share. ``ndims`` (optional) keeps 2-D arrays only."""
    found = sorted((int(m.group(1)), j) for j, k in enumerate(names)
                   if (m := CARRIER_NAME.fullmatch(k)) and (ndims is None or ndims[j] == 2))
    if not found:
        raise ValueError("the weights hold no colour head (rgb_net) to carry a signature")
    return [j for _, j in found]


def carrier_locations(positions: np.ndarray, sizes: list[int]) -> list[tuple[int, int]]:
    """``(array, flat index)`` of each carrier position, for carrier arrays of ``sizes`` entries in carrier
    order (the positions index their flattened concatenation)."""
    ends = np.cumsum([0] + list(sizes))
    if len(positions) and (np.min(positions) < 0 or np.max(positions) >= ends[-1]):
        raise ValueError(f"carrier positions beyond the {ends[-1]} weights of this colour head")
    layer = np.searchsorted(ends, positions, side="right") - 1
    return [(int(i), int(p - ends[i])) for i, p in zip(layer, positions)]


def carrier_from_state(state: dict) -> list[torch.Tensor]:
    """The carrier read from a field's state dict (or ``named_parameters``): what a verifier holding only the
    released weights (a run's checkpoint, DecentNeRF's ``server/global.pt``) needs."""
    names = list(state)
    return [state[names[j]] for j in carrier_order(names, [getattr(v, "ndim", 0) for v in state.values()])]


def carrier_tensors(field: nn.Module) -> list[torch.Tensor]:
    """The carrier of a field: its colour head's linear weights (parameters, for the sign loss), in carrier
    order (their entries, flattened and concatenated, are the positions)."""
    try:
        return carrier_from_state(dict(field.named_parameters()))
    except ValueError:
        raise ValueError(f"a {type(field).__name__} has no colour head (rgb_net) to carry a signature") from None


def carrier_size(field: nn.Module) -> int:
    return sum(t.numel() for t in carrier_tensors(field))


def carrier_values(field: nn.Module | dict) -> torch.Tensor:
    """All carrier entries ``(carrier_size,)`` of a field or of its state dict, detached."""
    ts = carrier_from_state(field) if isinstance(field, dict) else carrier_tensors(field)
    return torch.cat([t.detach().reshape(-1) for t in ts])


def read_released_weights(path: Path) -> dict:
    """The field state dict a verifier checks: ``path`` is a run directory (``checkpoints/last.pt``), a
    federated run directory (``server/global.pt``, the released global model) or either file. Errors name
    the file."""
    path = Path(path)
    if path.is_dir():
        cands = [path / "checkpoints" / "last.pt", path / "server" / "global.pt"]
        found = [c for c in cands if c.exists()]
        if not found:
            raise SceneError(path, "no checkpoints/last.pt nor server/global.pt (is it a privnerf run directory?)")
        path = found[0]
    if not path.is_file():
        raise SceneError(path, "no such checkpoint")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file gets one clear error
        raise SceneError(path, f"not a privnerf checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(st, dict) or not isinstance(st.get("field"), dict):
        raise SceneError(path, "not a privnerf checkpoint (no field weights in it)")
    try:
        carrier_from_state(st["field"])
    except ValueError as e:
        raise SceneError(path, str(e)) from None
    return st["field"]


class SignLoss(nn.Module):
    """``weight * sum_i max(0, margin - b_i w_i)`` over the keys' positions (one or more owners).

    Example::

        >>> field = nn.Module(); field.rgb_net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> key = new_key("a", bits=16, carrier_size=carrier_size(field), seed=1)
        >>> loss = SignLoss([key], field)
        >>> float(loss(field).detach()) > 0
        True
    """

    def __init__(self, keys: list[SignatureKey], field: nn.Module, margin: float = 0.1, weight: float = 0.1):
        super().__init__()
        n = carrier_size(field)
        idx, bits = [], []
        for k in keys:
            if k.carrier_size != n:
                raise ValueError(f"key of {k.owner!r} is for a carrier of {k.carrier_size} weights; this field's "
                                 f"colour head has {n} (another --field.grid mlp layout)")
            i, b = key_positions(k)
            idx.append(i)
            bits.append(b)
        self.register_buffer("idx", torch.from_numpy(np.concatenate(idx)))
        self.register_buffer("bits", torch.from_numpy(np.concatenate(bits)))
        self.margin, self.weight = float(margin), float(weight)

    def forward(self, field: nn.Module) -> torch.Tensor:
        w = torch.cat([t.reshape(-1) for t in carrier_tensors(field)])[self.idx]
        return self.weight * torch.relu(self.margin - self.bits * w).sum()


def binomial_tail(matches: int, n: int) -> float:
    """``P(X >= matches)`` for ``X ~ Binomial(n, 1/2)``: the chance a model without the signature matches at least
    this many bits."""
    return sum(math.comb(n, k) for k in range(matches, n + 1)) / 2.0**n


def verify(field: nn.Module | dict, key: SignatureKey) -> dict:
    """``{"owner", "bits", "matches", "bit_accuracy", "false_positive_probability", "verified"}`` for ``key``
    against ``field``'s weights (the field or its state dict; a zero weight matches neither bit)."""
    values = carrier_values(field)
    n = values.numel()
    if key.carrier_size != n:
        raise ValueError(f"key of {key.owner!r} is for a carrier of {key.carrier_size} weights; this model's colour "
                         f"head has {n}")
    idx, bits = key_positions(key)
    w = values.cpu().numpy()[idx]
    matches = int(np.sum(np.sign(w) == bits))
    p = binomial_tail(matches, key.bits)
    return {"owner": key.owner, "bits": key.bits, "matches": matches, "bit_accuracy": matches / key.bits,
            "false_positive_probability": p, "verified": p < FALSE_POSITIVE, "commitment": key.commitment}


__all__ = ["FALSE_POSITIVE", "KEY_FORMAT", "SignLoss", "SignatureKey", "binomial_tail", "carrier_from_state",
           "carrier_locations", "carrier_order", "carrier_size", "carrier_tensors", "carrier_values", "check_key", "key_positions", "new_key", "read_key",
           "read_released_weights", "slot_block", "verify", "write_key"]
