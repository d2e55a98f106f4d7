#!/usr/bin/env bash
# Make this machine ready to run embcache's tests and demo (Debian/Ubuntu, Python 3.11+), idempotently:
# install redis-server/redis-cli, python3-venv, a C/C++ compiler and the Python headers with apt-get when
# they are missing, then create .venv in the repo root and `pip install -e '.[dev]'` into it.
#   EMBCACHE_PYTHON      interpreter for the venv (default: python3)
#   EMBCACHE_SETUP_FORCE=1  reinstall the package even when pyproject.toml has not changed
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${EMBCACHE_PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.embcache-setup"

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set EMBCACHE_PYTHON to a Python 3.11+ interpreter)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY is $("$PY" -V 2>&1); embcache needs Python 3.11+ (set EMBCACHE_PYTHON)"
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# The package is (re)installed when there is no venv, pyproject.toml changed, or embcache does not import.
want_hash="$(sha256sum pyproject.toml | cut -d' ' -f1) $PYVER"
need_install=1
if [[ "${EMBCACHE_SETUP_FORCE:-0}" != 1 && -x "$VENV/bin/python" && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$want_hash" ]] && "$VENV/bin/python" -c 'import embcache, hnswlib' 2>/dev/null; then
    need_install=0
fi

# Debian's python3 packages name the version (python3.11-venv) when the interpreter is not the default python3.
pkg_for() {  # pkg_for venv|dev
    local sys_py=/usr/bin/python3
    [[ -x $sys_py ]] || sys_py=python3
    if [[ "$("$sys_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "$PYVER" ]]; then
        echo "python3-$1"
    else
        echo "python$PYVER-$1"
    fi
}

missing=()
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    missing+=(redis-server redis-tools)
fi
if [[ $need_install == 1 ]]; then
    if [[ ! -x "$VENV/bin/python" ]] && ! { "$PY" -m venv --help >/dev/null 2>&1 \
            && "$PY" -m ensurepip --version >/dev/null 2>&1; }; then
        missing+=("$(pkg_for venv)")
    fi
    if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
        missing+=(build-essential)
    fi
    include="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
    if [[ ! -f "$include/Python.h" ]]; then
        missing+=("$(pkg_for dev)")
    fi
fi

if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get: install them by hand"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}: run as root or install sudo"
        SUDO=(sudo)
    fi
    say "installing with apt-get: ${missing[*]}"
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ $need_install == 1 && ! -f "$include/Python.h" ]]; then
        say "warning: $include/Python.h is still missing ($PY is not the system Python?); building hnswlib may fail"
    fi
fi
say "redis: $(redis-server --version | awk '{print $3}')"

if [[ $need_install == 0 ]]; then
    say "venv: $VENV up to date (EMBCACHE_SETUP_FORCE=1 reinstalls)"
    exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv "$VENV"
fi
say "installing embcache[dev] into $VENV (hnswlib may compile: a minute or two)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
"$VENV/bin/python" -c 'import embcache, hnswlib'
echo "$want_hash" >"$STAMP"
say "ready: $VENV/bin/python"
