"""The README's demo: MovieLens recommendations on embcache's embedded default, with real workers.

    python scripts/demo.py [--url redis://...] [--workers 2]

Without --url (and EMBCACHE_URL) it starts a private redis-server under EMBCACHE_HOME
(default ~/.local/share/embcache) and leaves the data there for the `embcache` CLI.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embcache.demo import run  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("EMBCACHE_URL"))
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    # the embedded server stays up 10 minutes after the demo, like after any CLI command, so that the `embcache`
    # commands it suggests reuse it instead of starting it again (docs/operations.md, the embedded server)
    os.environ.setdefault("EMBCACHE_LINGER", "600")
    t0 = time.perf_counter()
    run(a.url, n_workers=a.workers)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
