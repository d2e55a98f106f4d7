#!/usr/bin/env bash
# Prepare the machine (scripts/setup.sh), then run the demo from the repo root: scripts/demo.sh [demo args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/python scripts/demo.py "$@"
