"""The CPU demo's own pieces (``make demo``, ``docs/demo.md``): the synthetic task family (``tasks``) and the
held-out pass-rate evaluation (``evaluate``).

Not named ``demo``: ``python launch/demo.py`` puts ``launch/`` first on ``sys.path``, where ``demo`` is the
script.
"""
