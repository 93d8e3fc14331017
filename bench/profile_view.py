"""``python -m bench.profile_view <profile.json> [--top N] [--filter TEXT]``: read a sampling
profile written by ``bench.instrumented`` (KEEL_BENCH_PROFILE).

Prints where the loop's thread was (self: the innermost frame; inclusive: any frame on the stack)
as shares of all samples. Samples taken while the thread waited in ``select`` are idle time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def _short(frame: str) -> str:
    path, _, rest = frame.partition(":")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{rest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_view")
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="inclusive view: only frames containing this")
    parser.add_argument("--stalls", action="store_true",
                        help="only the samples taken while the loop stalled 50 ms or more")
    args = parser.parse_args(argv)
    data = json.loads(args.path.read_text())
    if args.stalls:
        print(f"during {data.get('stalls')} loop stalls of 50 ms or more:")
        data = {"samples": sum(data.get("stall_stacks", {}).values()),
                "stacks": data.get("stall_stacks", {})}
    total = data["samples"] or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in data["stacks"].items():
        frames = stack.split(";")
        own[_short(frames[-1])] += count
        seen = set()
        for f in frames:
            name = _short(f).rsplit(":", 1)[0]  # function, any line
            if name not in seen and args.filter in name:
                seen.add(name)
                inclusive[name] += count
    if "db" in data:
        print("write transactions (count, lock wait s, lock held s) by caller:")
        for caller, (count, wait, held) in data["db"]["writes"].items():
            print(f"  {count:7d} {wait:9.2f} {held:8.2f}  {caller}")
        print("reads by caller:")
        for caller, count in data["db"]["reads"].items():
            print(f"  {count:7d}  {caller}")
    print(f"{data['samples']} samples")
    print("self:")
    for name, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("inclusive:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
