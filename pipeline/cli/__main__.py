"""``python -m sporeflow.pipeline.cli``: the ``sporeflow`` command."""

from sporeflow.pipeline.cli.main import main

main()
