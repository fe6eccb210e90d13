"""Submitit launchers that run a λ-chunk of jobs per process (parents loaded once)."""
