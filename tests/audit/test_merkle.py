"""daemon.audit.merkle against hand-computed trees, the RFC 6962 test vectors (as shipped with the
Certificate Transparency reference code) and a recursive reference written from RFC 9162 2.1."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.audit import merkle

H = hashlib.sha256


def ref_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1: MTH of a list of leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return H(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n])."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def store(leaves: list[bytes]) -> dict[merkle.NodeKey, bytes]:
    """Every complete node, computed the slow way: what the log's tables hold."""
    nodes: dict[merkle.NodeKey, bytes] = {}
    level = 0
    while (1 << level) <= len(leaves):
        width = 1 << level
        for i in range(len(leaves) // width):
            nodes[(level, i)] = ref_mth(leaves[i * width:(i + 1) * width])
        level += 1
    return nodes


# The RFC 6962 test data of the CT reference implementation: 8 leaves and the roots of each prefix.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (index, tree size, path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (first, second, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]

CT_HASHES = [merkle.leaf_hash(d) for d in CT_LEAVES]
CT_NODES = store(CT_HASHES)


def test_leaf_and_node_prefixes_by_hand() -> None:
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = (H(b"\x00" + x).digest() for x in (a, b, c))
    assert merkle.leaf_hash(a) == la
    ab = H(b"\x01" + la + lb).digest()
    assert merkle.node_hash(la, lb) == ab
    # Three leaves: MTH = H(0x01 || MTH(a, b) || leaf(c)); the odd leaf is not duplicated.
    nodes = store([la, lb, lc])
    assert merkle.root(3, nodes.__getitem__) == H(b"\x01" + ab + lc).digest()
    assert merkle.root(1, nodes.__getitem__) == la
    assert merkle.fold([]) == merkle.EMPTY_ROOT == H(b"").digest()


def test_ct_roots() -> None:
    for n, expected in enumerate(CT_ROOTS, 1):
        assert merkle.root(n, CT_NODES.__getitem__).hex() == expected
        frontier = merkle.Frontier()
        for h in CT_HASHES[:n]:
            frontier.append(h)
        assert frontier.root().hex() == expected


@pytest.mark.parametrize("index,size,path", CT_INCLUSION)
def test_ct_inclusion(index: int, size: int, path: list[str]) -> None:
    proof = merkle.resolve(merkle.inclusion_plan(index, size), CT_NODES)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    assert merkle.verify_inclusion(index, size, CT_HASHES[index], proof, root)


@pytest.mark.parametrize("first,second,path", CT_CONSISTENCY)
def test_ct_consistency(first: int, second: int, path: list[str]) -> None:
    proof = merkle.resolve(merkle.consistency_plan(first, second), CT_NODES)
    assert [p.hex() for p in proof] == path
    r1, r2 = bytes.fromhex(CT_ROOTS[first - 1]), bytes.fromhex(CT_ROOTS[second - 1])
    assert merkle.verify_consistency(first, second, r1, r2, proof)


def test_against_reference_all_small_trees() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    nodes = store(leaves)
    for n in range(1, 71):
        root = ref_mth(leaves[:n])
        assert merkle.root(n, nodes.__getitem__) == root
        for m in range(n):
            proof = merkle.resolve(merkle.inclusion_plan(m, n), nodes)
            assert proof == ref_path(m, leaves[:n]), (m, n)
            assert merkle.verify_inclusion(m, n, leaves[m], proof, root)
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = merkle.resolve(merkle.consistency_plan(m, n), nodes)
            assert proof == ref_subproof(m, leaves[:n], True), (m, n)
            assert merkle.verify_consistency(m, n, ref_mth(leaves[:m]), ref_mth(leaves[:n]), proof)


def test_proofs_need_only_log_n_nodes() -> None:
    n = 1_000_003
    for index in (0, 1, n // 2, n - 1):
        assert len(merkle.needed(merkle.inclusion_plan(index, n))) <= 2 * n.bit_length()
    assert len(merkle.needed(merkle.consistency_plan(654_321, n))) <= 2 * n.bit_length()


def test_wrong_proofs_fail() -> None:
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(11)]
    nodes = store(leaves)
    root = ref_mth(leaves)
    proof = merkle.resolve(merkle.inclusion_plan(6, 11), nodes)
    assert merkle.verify_inclusion(6, 11, leaves[6], proof, root)
    assert not merkle.verify_inclusion(5, 11, leaves[6], proof, root)          # wrong index
    assert not merkle.verify_inclusion(6, 7, leaves[6], proof, root)           # wrong size
    assert not merkle.verify_inclusion(6, 11, leaves[7], proof, root)          # wrong leaf
    assert not merkle.verify_inclusion(6, 11, leaves[6], proof[:-1], root)     # short proof
    assert not merkle.verify_inclusion(6, 11, leaves[6], proof + [root], root)  # long proof
    bad = list(proof)
    bad[1] = bytes(32)
    assert not merkle.verify_inclusion(6, 11, leaves[6], bad, root)
    cproof = merkle.resolve(merkle.consistency_plan(4, 11), nodes)
    r4 = ref_mth(leaves[:4])
    assert merkle.verify_consistency(4, 11, r4, root, cproof)
    assert not merkle.verify_consistency(4, 11, root, root, cproof)
    assert not merkle.verify_consistency(4, 11, r4, r4, cproof)
    assert not merkle.verify_consistency(5, 11, r4, root, cproof)
    assert not merkle.verify_consistency(4, 11, r4, root, [])
    assert not merkle.verify_consistency(3, 3, r4, root, [])


def test_plans_refuse_impossible_requests() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_plan(5, 5)
    with pytest.raises(ValueError):
        merkle.consistency_plan(0, 5)
    with pytest.raises(ValueError):
        merkle.consistency_plan(6, 5)
    with pytest.raises(ValueError):
        merkle.subtrees(3, 7)  # not a range of the tree


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.data())
def test_frontier_and_chunks_match_reference(n: int, data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    frontier = merkle.Frontier()
    made: dict[merkle.NodeKey, bytes] = {(0, i): h for i, h in enumerate(leaves)}
    for h in leaves:
        made.update({(lv, i): x for lv, i, x in frontier.append(h)})
    assert made == store(leaves)
    assert frontier.root() == ref_mth(leaves)
    reopened = merkle.Frontier(n, [made[k] for k in merkle.root_plan(n)])
    assert reopened.root() == frontier.root()
    count = data.draw(st.integers(min_value=1, max_value=n))
    levels = merkle.levels(leaves)
    assert merkle.fold(merkle.chunk_subtrees(levels, count)) == ref_mth(leaves[:count])
