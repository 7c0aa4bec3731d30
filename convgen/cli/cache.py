"""``convgen cache info|clear``."""
from __future__ import annotations

from ..runtime import cache


def run(args) -> int:
    # A refused cache directory (CacheError) is reported by main, with what to do about it.
    if args.action == "info":
        _print_cache_info(cache.info())
    else:
        print(f"removed {cache.clear()} entries from {cache.cache_root()}")
    return 0


def _print_cache_info(info: dict) -> None:
    cap = info["max_bytes"]
    limit = "no limit" if cap is None else f"limit {cap / 1e6:.2f} MB"
    requests = info["hits"] + info["misses"]
    hit_rate = f" ({info['hits'] / requests:.0%} hits)" if requests else ""
    print(f"cache: {info['root']}\nentries: {info['entries']}\n"
          f"size: {info['bytes'] / 1e6:.2f} MB ({limit}; CONVGEN_CACHE_MAX_BYTES)\n"
          f"precompiled headers: {info['precompiled_headers']}, "
          f"{info['precompiled_header_bytes'] / 1e6:.2f} MB (outside the limit)\n"
          f"hits: {info['hits']}  misses: {info['misses']}{hit_rate}  "
          f"discarded: {info['discarded']}  evicted: {info['evicted']}  (since the last clear)")


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="inspect or clear the kernel cache")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(run=run)
