"""A tiny Hydra app for the lambda_star sweeper: score = 1 - (x - 0.7)², cost = x."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="sweeper_conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Append x to cfg.calls, raise at cfg.fail_at, return the metrics."""
    with open(cfg.calls, "a") as f:
        f.write(f"{cfg.x}\n")
    if cfg.fail_at is not None and abs(cfg.x - cfg.fail_at) < 1e-9:
        raise RuntimeError(f"made-up failure at x={cfg.x}")
    if cfg.flat:  # a plateau: every x scores the same, within a noise of ±0.01
        return {"score": 0.5, "score_ci_low": 0.49, "score_ci_high": 0.51, "cost": float(cfg.x)}
    return {"score": 1 - (cfg.x - 0.7) ** 2, "cost": float(cfg.x), "time/total_s": 0.001}


def on_study_end(study, sweeper) -> dict:
    """A hydra.sweeper.callback: write callback.json with what it was given, return it."""
    seen = {"study": study.study_name, "trials": len(study.trials),
            "objective": sweeper.objective, "direction": sweeper.direction,
            "constraints": [list(c) for c in sweeper.constraints],
            "calls": sweeper.config.calls}
    Path("callback.json").write_text(json.dumps(seen))
    return seen


if __name__ == "__main__":
    main()
