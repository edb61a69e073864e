"""Ownership of a trained scene: white-box signatures in the weights (IPR-NeRF), verified with a key."""
