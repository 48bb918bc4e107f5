# `python -m xb.broker` runs `xb-broker`, which lives above the layers in xb.serve.broker
# (the one import from broker/ upward, allowed by name in pyproject's import-linter contract).
from xb.serve.broker import main

main()
