"""A standalone Hydra sweeper on Optuna: search λ* that maximises a metric under constraints."""
