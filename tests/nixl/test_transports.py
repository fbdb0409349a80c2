"""The plugin over each transport to nodes on this host: the same KVBM-shaped blocks through
shared memory (the one-sided RESERVE/COMMIT and LOOKUP/RELEASE path, the default `auto` choice
here) and through TCP (PUT_BATCH/GET_BATCH), byte-exact, told apart by the nodes' op counters."""

import urllib.request

import pytest

from conftest import MIB, addr, buffer, dev_ids, make_agent, register_dram, registered, transfer


def ops(cluster):
    """memkv_requests_total by op, summed over the cluster's nodes."""
    total = {}
    for n in cluster.nodes:
        with urllib.request.urlopen(f"http://{n.admin}/v1/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('memkv_requests_total{op="'):
                    name = line.split('"')[1]
                    total[name] = total.get(name, 0) + float(line.split()[1])
    return total


@pytest.mark.parametrize("transport", ["auto", "shm", "tcp"])
def test_blocks_round_trip_over_each_transport(cluster, transport):
    agent = make_agent(cluster.params(transport=transport))
    n, size = 8, 2 * MIB
    pool = buffer(n * size, seed=21)
    back = buffer(n * size)
    register_dram(agent, pool, back)
    hashes = dev_ids(21, n)
    remote = [(0, size, h) for h in hashes]
    before = ops(cluster)
    with registered(agent, [(0, size, h, "") for h in hashes]):
        assert transfer(agent, "WRITE", [(addr(pool, i * size), size) for i in range(n)], remote) == "DONE"
        assert transfer(agent, "READ", [(addr(back, i * size), size) for i in range(n)], remote) == "DONE"
    assert (back == pool).all()
    after = ops(cluster)
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    if transport == "tcp":
        assert moved.get("put_batch", 0) > 0 and moved.get("commit", 0) == 0, moved
    else:
        # The nodes are on this host: auto picks shared memory.
        assert moved.get("commit", 0) > 0 and moved.get("lookup", 0) > 0, moved
        assert moved.get("put_batch", 0) == 0 and moved.get("get_batch", 0) == 0, moved
