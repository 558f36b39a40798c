"""``python -m blockswap_zoo.cli``: the same CLI as the ``blockswap-zoo`` command."""

from .app import main

main()
