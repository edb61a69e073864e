"""JacobiNeRF (Xu et al., CVPR 2023): shaping a radiance field with mutual-information gradients, and
propagating labels from clicks through the "resonance" of its Jacobians.

* :mod:`privnerf.semantics.jacobian`: the Jacobian of a ray's colour with respect to the grid field's last
  colour layer, in closed form.
* :mod:`privnerf.semantics.shaping`: the contrastive MI-gradient loss as the official code computes it, and
  the shaping fine-tune on top of the core trainer.
"""
