"""A Hydra sweeper on current Optuna: search λ* that maximises a metric under constraints."""
