"""Divide and conquer (DaC, Ma et al. 2024): view-group experts distilled into one student.

:mod:`privnerf.dac.grouping` splits the views, :mod:`privnerf.dac.distill` distils frozen experts into a
student (the API the federated DaC aggregator shares), :mod:`privnerf.dac.pipeline` runs the phases for
``privnerf train --method dac``. Kept import-free: the training config imports :mod:`privnerf.dac.config`.
"""
