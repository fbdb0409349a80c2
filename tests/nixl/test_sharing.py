"""Sharing between agents: replicas in other processes see the same blocks under one namespace;
namespaces (e.g. one per TP rank) keep equal devIds apart."""

import numpy as np

from conftest import (
    KIB,
    buffer,
    dev_ids,
    make_agent,
    read_objects,
    register_dram,
    run_worker,
    write_objects,
)


def test_replica_in_another_process_reads_what_one_wrote(cluster):
    ids, size, seed = dev_ids(501, 12), 512 * KIB, 501
    params = cluster.params(namespace="model-a")
    # Process A offloads the blocks and exits (its agent and connections are gone).
    assert run_worker({"op": "write", "params": params, "ids": ids, "size": size, "seed": seed}) == {"write": "DONE"}
    # Process B, a different agent in a different process, onboards them and checks every byte.
    got = run_worker({"op": "read", "params": params, "ids": ids, "size": size, "seed": seed})
    assert got == {"read": "DONE", "match": [True] * len(ids)}

    # So does this process, and a reader expecting other contents sees the difference.
    agent = make_agent(params)
    expected, dst = buffer(len(ids) * size, seed), buffer(len(ids) * size)
    register_dram(agent, dst)
    assert read_objects(agent, dst, [(d, i * size, size) for i, d in enumerate(ids)]) == "DONE"
    assert np.array_equal(dst, expected)
    wrong = run_worker({"op": "read", "params": params, "ids": ids, "size": size, "seed": seed + 1})
    assert wrong == {"read": "DONE", "match": [False] * len(ids)}


def test_tp_ranks_with_equal_dev_ids_do_not_collide(cluster):
    ids, size = dev_ids(601, 8), 256 * KIB
    objects = [(d, i * size, size) for i, d in enumerate(ids)]
    ranks = [make_agent(cluster.params(namespace=f"rank{r}")) for r in range(2)]
    srcs = [buffer(len(ids) * size, seed=600 + r) for r in range(2)]
    assert not np.array_equal(srcs[0], srcs[1])
    for agent, src in zip(ranks, srcs):
        register_dram(agent, src)
        assert write_objects(agent, src, objects) == "DONE"
    for r, (agent, src) in enumerate(zip(ranks, srcs)):
        dst = buffer(len(ids) * size)
        register_dram(agent, dst)
        assert read_objects(agent, dst, objects) == "DONE"
        assert np.array_equal(dst, src), f"rank{r} read another rank's bytes"


def test_namespace_hides_objects(cluster):
    ids, size = dev_ids(701, 6), 64 * KIB
    objects = [(d, i * size, size) for i, d in enumerate(ids)]
    x = make_agent(cluster.params(namespace="X"))
    src = buffer(len(ids) * size, seed=701)
    register_dram(x, src)
    assert write_objects(x, src, objects) == "DONE"
    query = [(0, 1, d, "") for d in ids]
    assert x.query_memory(query, "MEMKV", "OBJ") == [{"size": str(size)}] * len(ids)

    y = make_agent(cluster.params(namespace="Y"))
    assert y.query_memory(query, "MEMKV", "OBJ") == [None] * len(ids)
    no_ns = make_agent(cluster.params())
    assert no_ns.query_memory(query, "MEMKV", "OBJ") == [None] * len(ids)

    # A READ under Y fails (absent), and leaves the destination untouched.
    dst = buffer(len(ids) * size)
    register_dram(y, dst)
    assert read_objects(y, dst, objects).startswith("ERR")
    assert not dst.any()
    # Under Y the same devId can hold other bytes; X still reads its own.
    other = buffer(size, seed=702)
    register_dram(y, other)
    assert write_objects(y, other, [(ids[0], 0, size)]) == "DONE"
    back = buffer(len(ids) * size)
    register_dram(x, back)
    assert read_objects(x, back, objects) == "DONE"
    assert np.array_equal(back, src)
    assert read_objects(y, dst, [(ids[0], 0, size)]) == "DONE"
    assert np.array_equal(dst[:size], other)
