"""The ``blockswap-zoo`` command line: every Typer command, on top of the library (which never imports it).

``app`` (commands on models, recipes and the zoo), ``search`` (the search command), ``train``
(train-teacher, distill, evaluate, finetune) and ``output`` (consoles, ``fail``).
"""

from .app import app, main

__all__ = ["app", "main"]
