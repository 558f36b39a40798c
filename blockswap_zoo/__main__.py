"""``python -m blockswap_zoo``: the same CLI as the ``blockswap-zoo`` command."""

from .cli import main

main()
