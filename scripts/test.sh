#!/usr/bin/env bash
# The README's test command: set up what the tests need, then run the whole suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m unit`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
