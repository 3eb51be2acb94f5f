"""Merkle tree hashing, proofs and proof verification per RFC 6962 / RFC 9162 (section 2.1).

Nodes are named by `(level, index)`: level 0 holds the leaf hashes, and node `(L, i)` is the root
of the perfect subtree over leaves `[i * 2**L, (i + 1) * 2**L)`. Only such complete subtrees are
ever stored. The tree hash of any size, and every hash in an inclusion or consistency proof, is
the right fold of a few of these stored nodes (O(log n) of them), so producing a proof costs a
handful of keyed reads: the `*_plan` functions say which nodes, the others do the hashing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

NodeKey = tuple[int, int]
"""(level, index) of a complete subtree."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() for the empty tree."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def subtrees(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees that cover `[start, end)`, left to right, largest first.

    Only for the ranges RFC 9162's recursion produces (`start` a multiple of a power of two at
    least `end - start`), where MTH of the range is the right fold of these subtrees.
    """
    keys: list[NodeKey] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start & ((1 << level) - 1):
            raise ValueError(f"range [{start}, {end}) is not one the tree is built from")
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold of the subtree hashes of a range: MTH of the range (EMPTY_ROOT when none)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_plan(size: int) -> list[NodeKey]:
    return subtrees(0, size)


def inclusion_plan(index: int, size: int) -> list[list[NodeKey]]:
    """Per proof hash (leaf side first), the subtrees whose fold it is (RFC 9162 2.1.3.1 PATH)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    path: list[list[NodeKey]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtrees(start + k, end))
            end = start + k
        else:
            path.append(subtrees(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_plan(first: int, second: int) -> list[list[NodeKey]]:
    """Per proof hash, the subtrees whose fold it is (RFC 9162 2.1.4.1 PROOF(m, D[n]))."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second} (need 0 < first <= second)")
    proof: list[list[NodeKey]] = []
    start, end, m, complete = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtrees(start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtrees(start + k, end))
            end = start + k
        else:
            proof.append(subtrees(start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


def needed(plans: Iterable[Iterable[NodeKey]]) -> set[NodeKey]:
    return {key for plan in plans for key in plan}


def resolve(plan: Sequence[Sequence[NodeKey]], nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    """Hash each group of a plan with the node hashes fetched for it."""
    return [fold([nodes[key] for key in group]) for group in plan]


def root(size: int, get: Callable[[NodeKey], bytes]) -> bytes:
    return fold([get(key) for key in root_plan(size)])


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2; equal sizes need an empty proof and equal roots."""
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


class Frontier:
    """The right edge of a growing tree: one perfect-subtree root per set bit of its size.

    `append` returns the complete nodes (level >= 1) the new leaf finished, which is what the
    log stores; `root()` is MTH of everything appended so far.
    """

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        plan = root_plan(size)
        if len(plan) != len(nodes):
            raise ValueError(f"a tree of size {size} has {len(plan)} frontier nodes, got {len(nodes)}")
        self.size = size
        self.stack: list[tuple[int, bytes]] = [(level, h) for (level, _), h in zip(plan, nodes)]

    def copy(self) -> Frontier:
        twin = Frontier()
        twin.size, twin.stack = self.size, list(self.stack)
        return twin

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        made: list[tuple[int, int, bytes]] = []
        index, level, h = self.size, 0, leaf
        stack = self.stack
        while stack and stack[-1][0] == level:
            h = node_hash(stack.pop()[1], h)
            level += 1
            index >>= 1
            made.append((level, index, h))
        stack.append((level, h))
        self.size += 1
        return made

    def push_subtree(self, level: int, h: bytes) -> list[tuple[int, int, bytes]]:
        """Append a whole perfect subtree of 2**level leaves (the size must be a multiple of it)."""
        if self.size & ((1 << level) - 1):
            raise ValueError(f"size {self.size} is not aligned for a subtree of level {level}")
        made: list[tuple[int, int, bytes]] = []
        width, index = 1 << level, self.size >> level
        stack = self.stack
        while stack and stack[-1][0] == level:
            h = node_hash(stack.pop()[1], h)
            level += 1
            index >>= 1
            made.append((level, index, h))
        stack.append((level, h))
        self.size += width
        return made

    def hashes(self) -> list[bytes]:
        return [h for _, h in self.stack]

    def root(self) -> bytes:
        return fold(self.hashes())


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All complete nodes above a run of leaves that starts on a 2**k boundary, level by level."""
    out = [list(leaves)]
    cur = out[0]
    sha = _sha256
    while len(cur) > 1:
        cur = [sha(b"\x01" + a + b).digest() for a, b in zip(cur[0::2], cur[1::2])]
        out.append(cur)
    return out


def chunk_subtrees(chunk_levels: Sequence[Sequence[bytes]], count: int) -> list[bytes]:
    """Subtree hashes covering the first `count` leaves of a chunk, largest first."""
    out: list[bytes] = []
    offset = 0
    for level in range(count.bit_length() - 1, -1, -1):
        if count & (1 << level):
            out.append(chunk_levels[level][offset >> level])
            offset += 1 << level
    return out
