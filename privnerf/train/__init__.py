"""The one training loop (Trainer), its configuration, optimizers, ray sampling and checkpoints."""
