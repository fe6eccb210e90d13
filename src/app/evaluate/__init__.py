"""Evaluation with lm-eval: tasks and requests built once (``tasks``), run by an engine
(``engine``), scored with lm-eval's metrics plus calibration (``scoring``), for every merge
(``evaluator``); ``schema`` is the task group's config, ``stock`` lm-eval's own path.
"""
