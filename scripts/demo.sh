#!/usr/bin/env bash
# The README's demo command: set up, then run `medhash demo` on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medhash demo "$@"
