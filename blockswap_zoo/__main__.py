"""``python -m blockswap_zoo``: the same CLI as the ``blockswap-zoo`` command."""

from .cli.app import main

main()
