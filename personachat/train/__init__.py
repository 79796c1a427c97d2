"""Training: the loop and its state, checkpoints, automatic batch size, torchrun, reporting."""
