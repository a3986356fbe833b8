"""Training: data sets and splits, the weight-prediction network, the L2W meta step, the uniform
baseline, the trainer (CPU / CUDA / DDP via torchrun), checkpoints; writes a bundle."""
