"""One module per CLI command: its configuration dataclass (``CONFIG``), ``HELP`` and ``run``.

Command modules are imported lazily by :mod:`voco_backend.cli` so that ``models list`` or ``--help`` never pay
for importing torch.
"""
