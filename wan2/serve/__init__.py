"""Serving generation: event files (``events``), profiles and the load-aware choice between them
(``profiles``, ``--deadline``), the exactly-once output journal (``journal``) and the spool worker (``watch``)
behind ``scripts/generate.py``."""
