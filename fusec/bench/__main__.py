"""``python -m fusec.bench serve|keygen``: the worker processes of ``fusec bench``."""
from fusec.bench.cli import main

main()
