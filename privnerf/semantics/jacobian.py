"""The Jacobian that JacobiNeRF shapes, for the grid field: d(mean RGB of a ray) / d(last colour layer).

Which parameters. JacobiNeRF takes the Jacobian of the rendered colour with respect to the NeRF's last RGB
layer (``rgb_linear.weight``, 3 x 128). Our grid field's only shared colour layers are the deferred
shading head (:func:`privnerf.fields.grid_field.deferred_shading`), run once per ray on the composited
features::

    C(r) = c_diffuse(r) + O(r) * (W a(r) + b),    a(r) = penultimate activation of ``rgb_net`` (width,)

so its last ``Linear`` (``W``: 3 x width) is the direct counterpart: it is shared by every ray, it moves
colour and not geometry (perturbing it leaves density, weights and depth as they are, as in the paper),
and its Jacobian has an exact closed form, so the shaping loss needs no second-order autograd::

    J(r) = d mean_ch C_ch(r) / dW = (O(r) / 3) * [a(r); a(r); a(r)]         (3, width)

Every row is the same, and ``cos(J_i, J_j) = cos(a_i, a_j)`` for rays with opacity: shaping aligns the
head's penultimate activations of rays that belong together. The colour is *linear* in ``W`` (no sigmoid
after the head), so the response to a perturbation ``W + t G`` is exactly ``t O(r) (G a(r))``: propagation
needs no first-order approximation either.
"""

from __future__ import annotations

import torch

from privnerf.fields.encoding import positional_encoding


VIEWS = ("ray", "zero")
"""Where the head is evaluated for a Jacobian: ``ray`` (each ray's own direction, what renders the colour) or
``zero`` (a zero direction for every ray: a view-independent Jacobian, the counterpart of the paper's 3D
variant, so one point's Jacobian is the same from every camera; the rendered colour keeps the real direction)."""

DEFAULT_VIEW = "zero"
"""The view shaping and propagation use unless told otherwise (``ShapingConfig.jacobian_view``'s default;
measured in docs/semantics.md). :func:`head_activation` itself defaults to ``ray``: the true colour Jacobian."""


def check_view(view: str) -> str:
    """``view`` if it is one of :data:`VIEWS`, else a ValueError naming them."""
    if view not in VIEWS:
        raise ValueError(f"Jacobian view {view!r}: expected one of {', '.join(VIEWS)}")
    return view


def head_input(field, composited: torch.Tensor, dirs: torch.Tensor, view: str = "ray") -> torch.Tensor:
    """The deferred head's input ``(r, F + PE)`` from composited values ``(r, F)`` and ray directions ``(r, 3)``
    (replaced by zeros when ``view == "zero"``, see :data:`VIEWS`)."""
    if check_view(view) == "zero":
        dirs = torch.zeros_like(dirs)
    return torch.cat([composited, positional_encoding(dirs, field.cfg.dir_freqs)], dim=-1)


def head_activation(field, composited: torch.Tensor, dirs: torch.Tensor, view: str = "ray") -> torch.Tensor:
    """The penultimate activation ``a (r, width)`` of the field's ``rgb_net`` (everything but its last layer),
    at the rays' directions or, with ``view="zero"``, at a zero direction.

    Example (a point's zero-direction activation does not depend on the camera)::

        >>> import torch, types
        >>> from privnerf.fields.grid_field import GridFieldConfig, make_rgb_net
        >>> cfg = GridFieldConfig()
        >>> f = types.SimpleNamespace(cfg=cfg, rgb_net=make_rgb_net(cfg))
        >>> comp = torch.rand(1, f.cfg.feature_dim).expand(2, -1)
        >>> dirs = torch.tensor([[1., 0., 0.], [0., 0., -1.]])
        >>> a = head_activation(f, comp, dirs, view="zero")
        >>> bool(torch.allclose(a[0], a[1]))
        True
    """
    return field.rgb_net[:-1](head_input(field, composited, dirs, view))


def last_layer(field) -> torch.nn.Linear:
    """The parameter block JacobiNeRF perturbs: ``rgb_net``'s last ``Linear`` (3 x width)."""
    layer = field.rgb_net[-1]
    if not isinstance(layer, torch.nn.Linear) or layer.out_features != 3:
        raise TypeError("JacobiNeRF needs the grid field's deferred colour head (rgb_net ending in Linear(width, 3))")
    return layer


def ray_jacobians(activation: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """Closed-form ``J = d mean_RGB(C) / dW`` per ray, ``(r, 3, width)``, from the head's activations ``(r, width)``
    and the rays' opacities ``(r,)``; differentiable in both.

    Example::

        >>> import torch
        >>> J = ray_jacobians(torch.tensor([[1., 2.]]), torch.tensor([0.6]))
        >>> [[round(x, 4) for x in row] for row in J[0].tolist()]
        [[0.2, 0.4], [0.2, 0.4], [0.2, 0.4]]
    """
    return (opacity[:, None, None] / 3.0) * activation[:, None, :].expand(-1, 3, -1)


def perturbed_response(activation: torch.Tensor, opacity: torch.Tensor, direction: torch.Tensor,
                       t: float) -> torch.Tensor:
    """``mean_ch |C_ch(W + t G) - C_ch(W)|`` per ray ``(r,)`` for a perturbation direction ``G`` ``(3, width)``:
    exactly ``t O(r) mean_ch |G_ch . a(r)|`` (the colour is linear in ``W``)."""
    return t * opacity * (activation @ direction.T).abs().mean(-1)


__all__ = ["DEFAULT_VIEW", "VIEWS", "check_view", "head_activation", "head_input", "last_layer", "perturbed_response", "ray_jacobians"]
