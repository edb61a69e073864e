"""Record what a Flower client actually sends: a client mod that writes one JSON line per outgoing message.

Put it first in a ClientApp's mod list (outermost), so it sees the message after every other mod (e.g. after
SecAgg+ has masked the arrays). Set ``PRIVNERF_AUDIT_DIR`` (inherited by simulation workers) to enable it.
Each line lists, per record, its keys with array shapes/dtypes/bytes, config values' types and sizes (for
SecAgg+'s masked vectors, the shapes read from the serialized arrays) and metric values.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np

ENV = "PRIVNERF_AUDIT_DIR"


def _describe_value(v):
    if isinstance(v, bytes):
        return {"type": "bytes", "len": len(v), "array": _npy_header(v)}
    if isinstance(v, list):
        return {"type": "list", "len": len(v), "items": [_describe_value(x) for x in v[:64]]}
    if isinstance(v, (int, float, bool, str)):
        return {"type": type(v).__name__, "value": v if not isinstance(v, str) else v[:200]}
    return {"type": type(v).__name__}


def _npy_header(b: bytes):
    """Shape and dtype of an ``np.save``-serialized array (Flower's ndarray_to_bytes), or None."""
    if not b.startswith(b"\x93NUMPY"):
        return None
    try:
        a = np.load(io.BytesIO(b), allow_pickle=False)
    except Exception:  # noqa: BLE001 - not an array
        return None
    return {"shape": list(a.shape), "dtype": str(a.dtype)}


def describe(content) -> dict:
    out = {"arrays": {}, "configs": {}, "metrics": {}}
    for name, rec in content.array_records.items():
        out["arrays"][name] = {k: {"shape": list(a.shape), "dtype": str(a.dtype), "bytes": len(a.data)}
                               for k, a in rec.items()}
    for name, rec in content.config_records.items():
        out["configs"][name] = {k: _describe_value(v) for k, v in rec.items()}
    for name, rec in content.metric_records.items():
        out["metrics"][name] = {k: v for k, v in rec.items()}
    return out


def audit_mod(msg, ctxt, call_next):
    """Flower client mod: pass the message on, then log the reply's content (if ``PRIVNERF_AUDIT_DIR`` is set)."""
    reply = call_next(msg, ctxt)
    folder = os.environ.get(ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        entry = {"time": time.time(), "node": int(msg.metadata.dst_node_id),
                 "type": str(msg.metadata.message_type), "has_content": reply.has_content()}
        if reply.has_content():
            entry["content"] = describe(reply.content)
        with open(Path(folder) / f"node-{entry['node']}.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
    return reply


def read_audit(folder: Path | str):
    """Every recorded reply's described content (``describe``), over all nodes' files in ``folder``; replies
    without content are skipped. Raises ``AssertionError`` if any reply carried arrays in the clear (a record
    of ``arrays`` that is not empty): with SecAgg+ every array leaves masked, inside ``configs``."""
    for f in sorted(Path(folder).glob("node-*.jsonl")):
        for line in f.read_text().splitlines():
            c = json.loads(line).get("content")
            if c is None:
                continue
            if any(len(rec) for rec in c["arrays"].values()):
                raise AssertionError(f"{f.name}: arrays left a client in the clear")
            yield c
