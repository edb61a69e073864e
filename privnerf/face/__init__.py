"""Identity-Obscured NeRF ("Do Not DeepFake Me", AAAI 2025): the person's side.

* :mod:`privnerf.face.operators`: the privacy operator σ (blurred, quantised grey gradients), differentiable.
* :mod:`privnerf.face.head`: the masked head capture as a bounded scene with a visual-hull box.
* :mod:`privnerf.face.obscure`: ``privnerf face obscure``: neutral RGB views + σ codes of sensitive views, and
  :func:`~privnerf.face.obscure.load_obscured` to read them back.

Attacks on σ (detection, recognition, Poisson and learned inversion) live in
:mod:`privnerf.privacy.face_attacks`.
"""

from privnerf.face.operators import OPERATORS, OperatorSpec, apply_operator, dequantize, quantize, to_gray

__all__ = ["OPERATORS", "OperatorSpec", "apply_operator", "dequantize", "quantize", "to_gray",
           "load_head", "load_obscured", "ObscuredData", "SensitiveView", "obscure_head"]


def __getattr__(name):  # lazy: the loaders pull in PIL and the data package
    if name == "load_head":
        from privnerf.face.head import load_head

        return load_head
    if name in ("load_obscured", "ObscuredData", "SensitiveView", "obscure_head"):
        from privnerf.face import obscure

        return getattr(obscure, name)
    raise AttributeError(f"module 'privnerf.face' has no attribute {name!r}")
