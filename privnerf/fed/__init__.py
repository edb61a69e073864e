"""Federated training on Flower: DecentNeRF (learned aggregation, personal fields, SecAgg+) and its baselines.
See docs/decentnerf.md; the message schema is in messages.py."""
