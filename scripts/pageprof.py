"""Which memory pages a forked worker copied from its launcher, and what sits on them.

Usage: python scripts/pageprof.py PID [--top N]

PID is a running worker (a child of the launcher). A page counts as the worker's own when its physical frame
differs from the launcher's at the same address and only the worker maps it (/proc/PID/pagemap: the
copy-on-write copies that make up its private memory). Pages of CPython's small-object allocator (pymalloc
pools of 16 KiB in 1 MiB arenas) are compared block by block with the launcher's: each page is named by the
kind of block written most on it. The kind is the block's type name, read from the type object's tp_name;
`(rc)` means only the reference count changed; `<pool header>` is a pool's first page whose blocks are
unchanged (its header changed: a block of the pool was allocated or freed), `<a block's tail>` a page where
only a block begun on the page before changed. Needs root: frame numbers in pagemap and the
other processes' memory are visible to CAP_SYS_ADMIN only. Standard library only; Linux, CPython 3.11
layouts (64-bit).
"""

from __future__ import annotations

import argparse
import collections
import re
import struct
import sys
from typing import BinaryIO

POOL_SIZE = 16384  # CPython 3.10+ on 64-bit: 16 KiB pools
POOL_HEADER = 48  # sizeof(struct pool_header), rounded to the 16-byte alignment
SZIDX_OFFSET = 36  # struct pool_header: ref, freeblock, nextpool, prevpool, arenaindex, szidx, ...
PAGE = 4096
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63
EXCLUSIVE = 1 << 56


def writable_regions(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of every writable mapping of `pid`; anonymous ones are named [anon]."""
    regions = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)", line)
            if m and "w" in m.group(3):
                regions.append((int(m.group(1), 16), int(m.group(2), 16), m.group(4) or "[anon]"))
    return regions


def read_at(f: BinaryIO, address: int, size: int) -> bytes:
    """`size` bytes of a process's memory at `address` (b"" where it cannot be read)."""
    if not 0 < address < 1 << 47:
        return b""
    try:
        f.seek(address)
        return f.read(size)
    except (OSError, ValueError, OverflowError):
        return b""


class Profile:
    """The pages a worker copied from its launcher, by mapping and, for pymalloc pages, by kind."""

    def __init__(self, worker: int) -> None:
        with open(f"/proc/{worker}/stat", encoding="ascii") as f:
            self.launcher = int(f.read().rsplit(")", 1)[1].split()[1])
        self.worker = worker
        self.by_mapping: collections.Counter[str] = collections.Counter()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self._type_names: dict[int, str] = {}

    def run(self) -> None:
        """Walks every writable mapping of the worker."""
        with (
            open(f"/proc/{self.worker}/pagemap", "rb") as mine,
            open(f"/proc/{self.launcher}/pagemap", "rb") as theirs,
            open(f"/proc/{self.worker}/mem", "rb") as self.mem,
            open(f"/proc/{self.launcher}/mem", "rb") as self.launcher_mem,
        ):
            for start, end, name in writable_regions(self.worker):
                pages = (end - start) // PAGE
                mine.seek(start // PAGE * 8)
                theirs.seek(start // PAGE * 8)
                a, b = mine.read(pages * 8), theirs.read(pages * 8)
                for i in range(pages):
                    (x,) = struct.unpack_from("<Q", a, i * 8)
                    y = struct.unpack_from("<Q", b, i * 8)[0] if i * 8 + 8 <= len(b) else 0
                    if x & PRESENT and x & EXCLUSIVE and (x & PFN_MASK) != (y & PFN_MASK):
                        self.by_mapping[name] += 1
                        if name == "[anon]":
                            self.by_kind[self._kind(start + i * PAGE)] += 1

    def _kind(self, address: int) -> str:
        """What was written most on the page at `address`, if it is a pymalloc page."""
        pool = address & ~(POOL_SIZE - 1)
        header = read_at(self.mem, pool, POOL_HEADER)
        mine, theirs = read_at(self.mem, address, PAGE), read_at(self.launcher_mem, address, PAGE)
        if len(header) < POOL_HEADER or len(mine) < PAGE or len(theirs) < PAGE:
            return "<unreadable>"
        szidx = struct.unpack_from("<I", header, SZIDX_OFFSET)[0]
        if szidx > 31:
            return "<not a pymalloc page>"
        size = (szidx + 1) * 16
        first = pool + POOL_HEADER
        block = first if address <= first else address + (size - (address - first) % size) % size
        kinds: collections.Counter[str] = collections.Counter()
        while block + 16 <= address + PAGE:
            lo = block - address
            hi = min(lo + size, PAGE)
            if mine[lo:hi] != theirs[lo:hi]:
                (type_address,) = struct.unpack_from("<Q", mine, lo + 8)
                only_refcount = mine[lo + 8 : hi] == theirs[lo + 8 : hi]
                kinds[f"{self._type_name(type_address)}{'(rc)' if only_refcount else ''}/{size}"] += 1
            block += size
        if kinds:
            return kinds.most_common(1)[0][0]
        return "<pool header>" if address == pool else "<a block's tail>"

    def _type_name(self, address: int) -> str:
        """tp_name of the type object at `address`, or ? when it does not look like one."""
        if address not in self._type_names:
            name = "?"
            raw = read_at(self.mem, address + 24, 8)  # ob_refcnt, ob_type, ob_size, then tp_name
            if len(raw) == 8:
                text = read_at(self.mem, struct.unpack("<Q", raw)[0], 64).split(b"\0")[0]
                if text and all(32 < c < 127 for c in text):
                    name = text.decode()
            self._type_names[address] = name
        return self._type_names[address]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int, help="a worker process")
    parser.add_argument("--top", type=int, default=20, help="kinds of pymalloc page to list (default 20)")
    args = parser.parse_args(argv)
    try:
        profile = Profile(args.pid)
        profile.run()
    except (OSError, ValueError) as exc:
        print(f"pageprof: error: {exc}", file=sys.stderr)
        return 1
    total = sum(profile.by_mapping.values())
    print(
        f"worker {args.pid} (launcher {profile.launcher}): {total} pages ({total * PAGE // 1024} kB) its own"
    )
    for name, pages in profile.by_mapping.most_common():
        print(f"  {pages:6d}  {name}")
    print("pymalloc pages ([anon]) by the kind of block written most on them:")
    for kind, pages in profile.by_kind.most_common(args.top):
        print(f"  {pages:6d}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
