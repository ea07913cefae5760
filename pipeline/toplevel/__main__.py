"""``python -m sporeflow``: the ``sporeflow`` command."""

from sporeflow.pipeline.cli import main

main()
