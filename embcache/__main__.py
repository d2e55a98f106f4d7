"""``python -m embcache``: the ``embcache`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
