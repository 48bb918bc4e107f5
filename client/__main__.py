# `python -m xb.client` runs `xb`, which adds the dashboard above the layers in xb.serve.cli
# (the one import from client/ upward, allowed by name in pyproject's import-linter contract).
from xb.serve.cli import main

main()
