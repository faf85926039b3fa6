"""The training loop: engine construction, schedule, checkpoints, and the per-worker fit."""
