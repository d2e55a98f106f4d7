"""``python -m workers``: the same as ``embcache worker``."""

from embcache.cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["worker", *sys.argv[1:]]))
