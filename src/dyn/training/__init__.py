"""Training: batches, the recipe, the loop, the distillation task and losses, resume state, data
parallelism, and the two jobs that train (fetch with weights: train, distill)."""
