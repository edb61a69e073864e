"""privnerf: privacy-preserving NeRFs from many people's photos.

Layers (bottom to top): ``data`` → ``fields`` / ``render`` / ``eval`` → ``train`` → protocol layers → ``cli``.
"""

__version__ = "0.1.0"
