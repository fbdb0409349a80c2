"""KVBM-shaped offload and onboard through the real NIXL agent and libplugin_MEMKV.so.

KVBM keeps one registered host pool, names each block by its 64-bit sequence hash (the devId of an
OBJ_SEG descriptor with empty metaInfo), and registers/deregisters the OBJ descriptors around each
transfer. These tests do the same and check every byte that comes back.
"""

import time

import numpy as np

from conftest import (
    KIB,
    MIB,
    addr,
    buffer,
    dev_ids,
    make_agent,
    register_dram,
    registered,
    transfer,
    wait,
)

BLOCK = 2 * MIB
BLOCKS = 16


def test_offload_and_onboard_batches_of_16_blocks(cluster):
    agent = make_agent(cluster.params())
    # One pool, like KVBM's host tier: the first half is the offload source, the second half the
    # onboard destination.
    pool = buffer(2 * BLOCKS * BLOCK)
    register_dram(agent, pool)
    src, dst = pool[: BLOCKS * BLOCK], pool[BLOCKS * BLOCK :]
    rng = np.random.default_rng(7)
    for batch in range(4):
        src[:] = buffer(BLOCKS * BLOCK, seed=1000 + batch)
        dst[:] = 0
        hashes = dev_ids(batch, BLOCKS)
        assert any(h >= 2**63 for h in hashes) and len(set(hashes)) == BLOCKS
        # Blocks sit in arbitrary pool slots, different on the way out and on the way back.
        out_slot, in_slot = rng.permutation(BLOCKS), rng.permutation(BLOCKS)
        objs = [(0, BLOCK, h, "") for h in hashes]
        remote = [(0, BLOCK, h) for h in hashes]

        with registered(agent, objs):
            local = [(addr(src, int(s) * BLOCK), BLOCK) for s in out_slot]
            assert transfer(agent, "WRITE", local, remote) == "DONE"

        assert agent.query_memory([(0, 1, h, "") for h in hashes], "MEMKV", "OBJ") == [{"size": str(BLOCK)}] * BLOCKS

        with registered(agent, objs):
            local = [(addr(dst, int(s) * BLOCK), BLOCK) for s in in_slot]
            assert transfer(agent, "READ", local, remote) == "DONE"

        for j in range(BLOCKS):
            o, i = int(out_slot[j]) * BLOCK, int(in_slot[j]) * BLOCK
            assert np.array_equal(dst[i : i + BLOCK], src[o : o + BLOCK]), f"batch {batch} block {j} differs"


def test_layer_separate_object_in_64_chunks(cluster):
    """One block stored as 64 per-layer chunks of 32 KiB whose host copies are not in layer order."""
    agent = make_agent(cluster.params())
    chunk, layers = 32 * KIB, 64
    size = chunk * layers
    src, dst, whole = buffer(size, seed=11), buffer(size), buffer(size)
    register_dram(agent, src, dst, whole)
    rng = np.random.default_rng(3)
    put_at, get_at = rng.permutation(layers), rng.permutation(layers)
    assert not np.array_equal(put_at, np.arange(layers))
    (dev,) = dev_ids(99, 1)
    # What the object holds: layer l comes from local chunk put_at[l].
    expected = np.concatenate([src[int(s) * chunk : (int(s) + 1) * chunk] for s in put_at])

    with registered(agent, [(0, size, dev, "")]):
        remote = [(lay * chunk, chunk, dev) for lay in range(layers)]
        w = [(addr(src, int(put_at[lay]) * chunk), chunk) for lay in range(layers)]
        assert transfer(agent, "WRITE", w, remote) == "DONE"

        r = [(addr(dst, int(get_at[lay]) * chunk), chunk) for lay in range(layers)]
        assert transfer(agent, "READ", r, remote) == "DONE"
        for lay in range(layers):
            g = int(get_at[lay]) * chunk
            assert np.array_equal(dst[g : g + chunk], expected[lay * chunk : (lay + 1) * chunk]), f"layer {lay}"

        assert transfer(agent, "READ", [(addr(whole), size)], [(0, size, dev)]) == "DONE"
        assert np.array_equal(whole, expected)

        # Any range reads back, also one that starts and ends inside layers.
        whole[:] = 0
        off, n = 12345, 100_000
        assert transfer(agent, "READ", [(addr(whole), n)], [(off, n, dev)]) == "DONE"
        assert np.array_equal(whole[:n], expected[off : off + n])
        assert not whole[n:].any()

    assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [{"size": str(size)}]


def test_prepped_request_reposted(cluster):
    """The same handle posted again after DONE runs the transfer again, with the memory's new bytes."""
    agent = make_agent(cluster.params())
    n, size = 4, 256 * KIB
    src, dst = buffer(n * size, seed=21), buffer(n * size)
    register_dram(agent, src, dst)
    ids = dev_ids(21, n)
    with registered(agent, [(0, size, d, "") for d in ids]):
        remote = agent.get_xfer_descs([(0, size, d) for d in ids], "OBJ")
        src_descs = agent.get_xfer_descs([(addr(src, i * size), size, 0) for i in range(n)], "DRAM")
        dst_descs = agent.get_xfer_descs([(addr(dst, i * size), size, 0) for i in range(n)], "DRAM")
        put = agent.initialize_xfer("WRITE", src_descs, remote, agent.name)
        get = agent.initialize_xfer("READ", dst_descs, remote, agent.name)
        try:
            assert wait(agent, put) == "DONE"
            assert wait(agent, get) == "DONE"
            assert np.array_equal(dst, src)

            first = src.copy()
            src[:] = buffer(n * size, seed=22)
            assert not np.array_equal(src, first)
            assert wait(agent, put) == "DONE"  # repost of the WRITE: the objects now hold the new bytes
            dst[:] = 0
            assert wait(agent, get) == "DONE"
            assert np.array_equal(dst, src)

            dst[:] = 0
            assert wait(agent, get) == "DONE"  # and the READ reposted a second time
            assert np.array_equal(dst, src)
        finally:
            agent.release_xfer_handle(put)
            agent.release_xfer_handle(get)


def test_make_prepped_xfer_by_index(cluster):
    """prep_xfer_dlist on both sides, then requests that pick descriptors by index."""
    agent = make_agent(cluster.params())
    n, size = 8, 128 * KIB
    src, dst = buffer(n * size, seed=31), buffer(n * size)
    register_dram(agent, src, dst)
    ids = dev_ids(31, n)
    with registered(agent, [(0, size, d, "") for d in ids]):
        src_side = agent.prep_xfer_dlist("NIXL_INIT_AGENT", [(addr(src, i * size), size, 0) for i in range(n)], "DRAM")
        dst_side = agent.prep_xfer_dlist("NIXL_INIT_AGENT", [(addr(dst, i * size), size, 0) for i in range(n)], "DRAM")
        obj_side = agent.prep_xfer_dlist(agent.name, [(0, size, d) for d in ids], "OBJ")
        try:
            # Local slot i goes to object i for the even slots only...
            evens = list(range(0, n, 2))
            put = agent.make_prepped_xfer("WRITE", src_side, evens, obj_side, evens)
            # ...and the odd slots go to the odd objects in reverse: slot 1 -> object 7, 3 -> 5, ...
            odds = list(range(1, n, 2))
            put2 = agent.make_prepped_xfer("WRITE", src_side, odds, obj_side, odds[::-1])
            for h in (put, put2):
                assert wait(agent, h) == "DONE"
                agent.release_xfer_handle(h)
            # Read every object i into destination slot n-1-i.
            get = agent.make_prepped_xfer("READ", dst_side, list(range(n))[::-1], obj_side, list(range(n)))
            assert wait(agent, get) == "DONE"
            agent.release_xfer_handle(get)
        finally:
            for h in (src_side, dst_side, obj_side):
                agent.release_dlist_handle(h)

    def slot(a, i):
        return a[i * size : (i + 1) * size]

    holder = {i: i for i in evens}  # object -> source slot
    holder.update({o: s for s, o in zip(odds, odds[::-1])})
    for obj in range(n):
        assert np.array_equal(slot(dst, n - 1 - obj), slot(src, holder[obj])), f"object {obj}"


def post(agent, op, local, remote):
    """initialize_xfer + transfer; returns the handle of the running request."""
    h = agent.initialize_xfer(
        op,
        agent.get_xfer_descs([(a, n, 0) for a, n in local], "DRAM"),
        agent.get_xfer_descs(list(remote), "OBJ"),
        agent.name,
    )
    assert agent.transfer(h) == "PROC"
    return h


def test_release_while_in_progress(cluster):
    """Releasing a handle whose transfer is still running aborts it: once release returns, the
    request no longer touches the caller's memory, objects hold one whole version, and the agent
    keeps working."""
    agent = make_agent(cluster.params())
    old, new, dst = buffer(BLOCKS * BLOCK, seed=41), buffer(BLOCKS * BLOCK, seed=43), buffer(BLOCKS * BLOCK)
    register_dram(agent, old, new, dst)
    ids = dev_ids(41, BLOCKS)
    remote = [(0, BLOCK, d) for d in ids]

    def blocks(buf):
        return [(addr(buf, i * BLOCK), BLOCK) for i in range(BLOCKS)]

    with registered(agent, [(0, BLOCK, d, "") for d in ids]):
        assert transfer(agent, "WRITE", blocks(old), remote) == "DONE"
        kept = old.copy()

        for _ in range(2):
            # A READ released mid-flight: nothing lands in dst after release returns (the
            # answers are received straight into registered memory, so this checks the loans).
            h = post(agent, "READ", blocks(dst), remote)
            agent.release_xfer_handle(h)
            dst[:] = 0xA5
            time.sleep(0.2)  # far longer than the 32 MiB would take to arrive
            assert (dst == 0xA5).all(), "an aborted READ wrote into the caller's memory after release"

        # A WRITE of new contents released mid-flight, its memory scribbled right after: each
        # object is then wholly the old or wholly the new version, never a mix or the scribble.
        replacement = new.copy()
        h = post(agent, "WRITE", blocks(new), remote)
        agent.release_xfer_handle(h)
        new[:] = 0x5A
        time.sleep(0.1)
        dst[:] = 0
        assert transfer(agent, "READ", blocks(dst), remote) == "DONE"
        for i in range(BLOCKS):
            got = dst[i * BLOCK : (i + 1) * BLOCK]
            assert np.array_equal(got, kept[i * BLOCK : (i + 1) * BLOCK]) or np.array_equal(
                got, replacement[i * BLOCK : (i + 1) * BLOCK]
            ), f"block {i} is neither the old nor the new version"

    # And new objects can be written and read after the aborted requests.
    more = dev_ids(42, 2)
    with registered(agent, [(0, BLOCK, d, "") for d in more]):
        rem = [(0, BLOCK, d) for d in more]
        assert transfer(agent, "WRITE", [(addr(old, 0), BLOCK), (addr(old, BLOCK), BLOCK)], rem) == "DONE"
        dst[: 2 * BLOCK] = 0
        assert transfer(agent, "READ", [(addr(dst, BLOCK), BLOCK), (addr(dst, 0), BLOCK)], rem) == "DONE"
    assert np.array_equal(dst[BLOCK : 2 * BLOCK], kept[:BLOCK])
    assert np.array_equal(dst[:BLOCK], kept[BLOCK : 2 * BLOCK])


def test_buffers_reusable_at_done(cluster):
    """At DONE a WRITE no longer reads its source: overwriting it at once changes nothing stored."""
    agent = make_agent(cluster.params())
    src, dst = buffer(BLOCKS * BLOCK, seed=45), buffer(BLOCKS * BLOCK)
    register_dram(agent, src, dst)
    expected = src.copy()
    ids = dev_ids(45, BLOCKS)
    remote = [(0, BLOCK, d) for d in ids]
    with registered(agent, [(0, BLOCK, d, "") for d in ids]):
        h = post(agent, "WRITE", [(addr(src, i * BLOCK), BLOCK) for i in range(BLOCKS)], remote)
        try:
            state = "PROC"
            while state == "PROC":
                state = agent.check_xfer_state(h)
            src[:] = 0  # reuse the memory the moment NIXL says DONE
            assert state == "DONE"
        finally:
            agent.release_xfer_handle(h)
        assert transfer(agent, "READ", [(addr(dst, i * BLOCK), BLOCK) for i in range(BLOCKS)], remote) == "DONE"
    assert np.array_equal(dst, expected)


def test_many_requests_in_flight(cluster):
    """Several posted requests progress independently (KVBM keeps many in flight)."""
    agent = make_agent(cluster.params())
    reqs, per, size = 8, 4, 256 * KIB
    src, dst = buffer(reqs * per * size, seed=51), buffer(reqs * per * size)
    register_dram(agent, src, dst)
    ids = dev_ids(51, reqs * per)
    with registered(agent, [(0, size, d, "") for d in ids]):
        for op, buf in (("WRITE", src), ("READ", dst)):
            handles = []
            for r in range(reqs):
                blocks = range(r * per, (r + 1) * per)
                handles.append(
                    agent.initialize_xfer(
                        op,
                        agent.get_xfer_descs([(addr(buf, b * size), size, 0) for b in blocks], "DRAM"),
                        agent.get_xfer_descs([(0, size, ids[b]) for b in blocks], "OBJ"),
                        agent.name,
                    )
                )
            assert [agent.transfer(h) for h in handles] == ["PROC"] * reqs
            for h in handles:
                assert wait_posted(agent, h) == "DONE"
                agent.release_xfer_handle(h)
    assert np.array_equal(dst, src)


def wait_posted(agent, handle, timeout=20.0):
    """Polls an already posted request to its end."""
    deadline = time.monotonic() + timeout
    state = "PROC"
    while state == "PROC" and time.monotonic() < deadline:
        time.sleep(0.0005)
        state = agent.check_xfer_state(handle)
    return state
