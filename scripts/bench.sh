#!/usr/bin/env bash
# Run the dicomsend benchmark; every argument goes to `python -m perf.bench`.
# Installs nothing: see perf/README.md for the prerequisites.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m perf.bench "$@"
