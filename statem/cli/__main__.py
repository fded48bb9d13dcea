"""``python -m statem.cli``."""

from . import main

main()
