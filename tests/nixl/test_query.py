"""queryMem through agent.query_memory: None for absent objects, {'size': '<bytes>'} for present
ones, keyed by metaInfo or (when metaInfo is empty) the decimal devId."""

import numpy as np

from conftest import KIB, addr, buffer, dev_ids, make_agent, register_dram, registered, transfer


def write_mixed(agent, objs, seed):
    """One WRITE of objects [(devId, metaInfo, size)] from one random buffer; returns the buffer."""
    total = sum(n for _, _, n in objs)
    src = buffer(total, seed)
    register_dram(agent, src)
    local, remote, at = [], [], 0
    for d, _, n in objs:
        local.append((addr(src, at), n))
        remote.append((0, n, d))
        at += n
    with registered(agent, [(0, n, d, m) for d, m, n in objs]):
        assert transfer(agent, "WRITE", local, remote) == "DONE"
    return src


def test_query_100_present_and_absent(cluster):
    agent = make_agent(cluster.params(namespace="q"))
    rng = np.random.default_rng(5)
    ids = dev_ids(801, 100)
    sizes = [1, 4096, 2 * 1024 * KIB] + [int(s) for s in rng.integers(2, 200 * KIB, 47)]
    # 30 objects keyed by devId, 20 keyed by metaInfo (their devIds only tell NIXL's descriptors apart).
    present = [(ids[i], "", sizes[i]) for i in range(30)]
    present += [(ids[i], f"model/layer-{i}/block-{ids[i]:x}", sizes[i]) for i in range(30, 50)]
    write_mixed(agent, present, seed=801)

    absent = [(ids[i], "", None) for i in range(50, 75)]
    absent += [(ids[i], f"model/layer-{i}/block-{ids[i]:x}", None) for i in range(75, 100)]
    everything = present + absent
    order = rng.permutation(len(everything))
    query = [(0, 1, everything[i][0], everything[i][1]) for i in order]
    expected = [None if everything[i][2] is None else {"size": str(everything[i][2])} for i in order]
    assert len(query) == 100
    got = agent.query_memory(query, "MEMKV", "OBJ")
    assert got == expected
    assert sum(g is not None for g in got) == 50


def test_query_key_is_meta_info_or_decimal_dev_id(cluster):
    agent = make_agent(cluster.params())
    by_id, by_meta, other = dev_ids(901, 3)
    write_mixed(agent, [(by_id, "", 3000), (by_meta, "kv/abc", 5000)], seed=901)
    q = [
        (0, 1, by_id, ""),  # devId-keyed: found by devId
        (0, 1, 0, str(by_id)),  # ...and by its decimal devId given as metaInfo
        (0, 1, other, "kv/abc"),  # metaInfo-keyed: any devId
        (0, 1, by_meta, ""),  # the devId of a metaInfo-keyed object is not its key
        (0, 1, 0, "kv/ab"),
        (0, 1, 0, hex(by_id)),
    ]
    got = agent.query_memory(q, "MEMKV", "OBJ")
    assert got == [{"size": "3000"}, {"size": "3000"}, {"size": "5000"}, None, None, None]

    # The same metaInfo under another devId names the same object for transfers too.
    dst = buffer(5000)
    register_dram(agent, dst)
    with registered(agent, [(0, 5000, other, "kv/abc")]):
        assert transfer(agent, "READ", [(addr(dst), 5000)], [(0, 5000, other)]) == "DONE"
    assert np.array_equal(dst, buffer(8000, seed=901)[3000:])


def test_rewrite_replaces_size_and_bytes(cluster):
    agent = make_agent(cluster.params())
    (dev,) = dev_ids(1001, 1)
    first = write_mixed(agent, [(dev, "", 64 * KIB)], seed=1)
    assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [{"size": str(64 * KIB)}]
    second = write_mixed(agent, [(dev, "", 10 * KIB)], seed=2)
    assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [{"size": str(10 * KIB)}]
    dst = buffer(10 * KIB)
    register_dram(agent, dst)
    with registered(agent, [(0, 10 * KIB, dev, "")]):
        assert transfer(agent, "READ", [(addr(dst), 10 * KIB)], [(0, 10 * KIB, dev)]) == "DONE"
    assert np.array_equal(dst, second)
    assert not np.array_equal(dst, first[: 10 * KIB])
