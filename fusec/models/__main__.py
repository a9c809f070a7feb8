"""``python -m fusec.models KIND OUT.onnx [options]`` (see :mod:`fusec.models.cli`)."""
from fusec.models.cli import main

raise SystemExit(main())
