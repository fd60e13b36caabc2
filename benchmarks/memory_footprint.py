"""Resident memory of the memory store after a million distinct deliveries.

    python -m benchmarks.memory_footprint [--deliveries 1000000] [--max-entries 100000]

The memory store is bounded by its entry count: past ``max_entries`` the oldest entries go, so the
resident size must level off once the bound is reached, however many deliveries follow.
"""

from __future__ import annotations

import argparse
import gc
import uuid
from datetime import datetime, timezone

from flask_musiccallback import Delivery, MemoryStore


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--max-entries", type=int, default=100_000)
    args = parser.parse_args()
    store = MemoryStore(ttl=7 * 24 * 3600, max_entries=args.max_entries)
    now = datetime.now(timezone.utc)
    gc.collect()
    start = rss_kib()
    print("| deliveries | entries kept | RSS growth (MiB) |")
    print("|---|---|---|")
    checkpoints = {args.max_entries // 2, args.max_entries, args.deliveries // 2, args.deliveries}
    for index in range(1, args.deliveries + 1):
        delivery = Delivery(uuid.uuid4().hex, stage="complete", payload={}, received_at=now)
        store.claim(delivery)
        store.complete(delivery)
        if index in checkpoints:
            gc.collect()
            growth = (rss_kib() - start) / 1024
            print(f"| {index:,} | {len(store):,} | {growth:.1f} |")
    assert len(store) <= args.max_entries


if __name__ == "__main__":
    main()
