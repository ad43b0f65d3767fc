"""Evaluation of exports, LoRAs and video folders (``python evaluate.py``), and the one judge of RankJump videos.

- ``config``: cheap checks before torch (values, unknown keys, ``videos=DIR`` manifests);
- ``requests``: prompt sets and captions parsed back into events; ``plan``: sides, items, metrics;
- ``sources``: videos generated from a model or read from a folder (``EvalSet``);
- ``registry`` + ``metrics/``: metrics that register themselves; ``judge``: the reader's verdicts and keys;
- ``scoring``, ``ab``: summaries, per-event means, the paired bootstrap; ``outputs``, ``report``: json / html / W&B;
- ``run``: ``main(cfg)``, what evaluate.py calls.
"""
