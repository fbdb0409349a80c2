"""Failures surface as NIXL errors, promptly and without wrong bytes: a node dying mid-run, bad
licenses and params (create_backend fails and the plugin says why on stderr), and requests the
OBJ_SEG contract does not allow."""

import datetime
import time

import numpy as np
import pytest

from conftest import (
    KIB,
    MIB,
    addr,
    buffer,
    dev_ids,
    error_text,
    make_agent,
    read_objects,
    register_dram,
    registered,
    run,
    transfer,
    wait,
    write_objects,
)


def test_node_killed_mid_batch(cluster):
    n, size = 24, 256 * KIB
    agent = make_agent(cluster.params(namespace="kill"))
    src, dst = buffer(n * size, seed=1101), buffer(n * size)
    register_dram(agent, src, dst)
    ids = dev_ids(1101, n)
    objects = [(d, i * size, size) for i, d in enumerate(ids)]
    assert write_objects(agent, src, objects) == "DONE"
    assert read_objects(agent, dst, objects) == "DONE"
    assert np.array_equal(dst, src)

    cluster.nodes[1].kill()

    def bounded(fn):
        t = time.monotonic()
        result = fn()
        elapsed = time.monotonic() - t
        assert elapsed < 8, f"took {elapsed:.1f}s with op_timeout_ms=3000"
        return result

    # A new batch that needs the dead node: a NIXL error, not a hang.
    more = buffer(n * size, seed=1102)
    register_dram(agent, more)
    new_objects = [(d, i * size, size) for i, d in enumerate(dev_ids(1102, n))]
    assert bounded(lambda: write_objects(agent, more, new_objects)).startswith("ERR")

    # Reading the whole first batch back: an error, and no block region holds wrong bytes.
    dst[:] = 0
    assert bounded(lambda: read_objects(agent, dst, objects)).startswith("ERR")
    for i in range(n):
        region = dst[i * size : (i + 1) * size]
        assert not region.any() or np.array_equal(region, src[i * size : (i + 1) * size]), f"block {i}"

    # Block by block: those on the surviving node still read back right, the others fail.
    alive, dead = [], []
    for i, d in enumerate(ids):
        dst[i * size : (i + 1) * size] = 0
        state = bounded(lambda: read_objects(agent, dst, [(d, i * size, size)]))
        region = dst[i * size : (i + 1) * size]
        if state == "DONE":
            assert np.array_equal(region, src[i * size : (i + 1) * size]), f"block {i}"
            alive.append(i)
        else:
            # The node is down, which is not "absent": NIXL_ERR_BACKEND, not NIXL_ERR_NOT_FOUND.
            assert state.startswith("ERR") and "NotFound" not in state, state
            assert "Backend" in state or state == "ERR:ERR", state
            assert not region.any(), f"failed block {i} wrote into its destination"
            dead.append(i)
    assert alive and dead, f"blocks on the live node {alive}, on the dead one {dead}"
    # queryMem answers at once: sizes from the live node, the dead node's objects are misses.
    query = agent.query_memory([(0, 1, d, "") for d in ids], "MEMKV", "OBJ")
    assert query == [{"size": str(size)} if i in alive else None for i in range(n)]

    # Writes of single objects that land on the live node keep working.
    written = 0
    for i, (d, o, s) in enumerate(new_objects):
        if bounded(lambda: write_objects(agent, more, [(d, o, s)])) == "DONE":
            dst[:size] = 0
            assert read_objects(agent, dst, [(d, 0, size)]) == "DONE"
            assert np.array_equal(dst[:size], more[o : o + s])
            written += 1
    assert 0 < written < n


def test_node_killed_while_a_batch_is_in_flight(cluster):
    """The batch is certainly in flight when its node dies: the node is frozen (SIGSTOP) when the
    requests are posted, then killed. Both requests end with a NIXL error at once (the connection
    drops; no waiting for op_timeout_ms), and no destination region holds wrong bytes."""
    n, size = 16, 2 * MIB
    agent = make_agent(cluster.params(namespace="inflight", op_timeout_ms=20000))
    src, dst, more = buffer(n * size, seed=1161), buffer(n * size), buffer(n * size, seed=1162)
    register_dram(agent, src, dst, more)
    old = [(d, i * size, size) for i, d in enumerate(dev_ids(1161, n))]
    new = [(d, i * size, size) for i, d in enumerate(dev_ids(1162, n))]
    assert write_objects(agent, src, old) == "DONE"
    assert read_objects(agent, dst, old) == "DONE"  # connections to both nodes are open
    dst[:] = 0

    def request(op, buf, objects):
        return agent.initialize_xfer(
            op,
            agent.get_xfer_descs([(addr(buf, o), k, 0) for _, o, k in objects], "DRAM"),
            agent.get_xfer_descs([(0, k, d) for d, _, k in objects], "OBJ"),
            agent.name,
        )

    with registered(agent, [(0, size, d, "") for d, _, _ in old + new]):
        handles = [request("READ", dst, old), request("WRITE", more, new)]
        victim = cluster.nodes[1]
        victim.pause()
        assert [agent.transfer(h) for h in handles] == ["PROC", "PROC"]
        time.sleep(0.2)
        assert [agent.check_xfer_state(h) for h in handles] == ["PROC", "PROC"], "blocked on the frozen node"
        victim.kill()
        t = time.monotonic()
        states = []
        for h in handles:
            try:
                state = agent.check_xfer_state(h)
                while state == "PROC" and time.monotonic() - t < 10:
                    time.sleep(0.001)
                    state = agent.check_xfer_state(h)
            except Exception as e:
                state = f"ERR:{error_text(e)}"
            states.append(state)
            agent.release_xfer_handle(h)
        elapsed = time.monotonic() - t
    assert all(s.startswith("ERR") for s in states), states
    assert elapsed < 5, f"the requests took {elapsed:.1f}s to fail after the kill (op timeout 20 s)"
    for i in range(n):
        region = dst[i * size : (i + 1) * size]
        assert not region.any() or np.array_equal(region, src[i * size : (i + 1) * size]), f"block {i}"


def test_frozen_node_times_out_and_recovers(cluster):
    """A node that stops answering (SIGSTOP, connections open) fails requests after op_timeout_ms,
    and once it answers again the same objects read back."""
    n, size = 24, 256 * KIB
    agent = make_agent(cluster.params(namespace="freeze", num_connections=1))
    src, dst = buffer(n * size, seed=1151), buffer(n * size)
    register_dram(agent, src, dst)
    objects = [(d, i * size, size) for i, d in enumerate(dev_ids(1151, n))]
    assert write_objects(agent, src, objects) == "DONE"
    assert read_objects(agent, dst, objects) == "DONE"  # the connection to each node is open now

    node = cluster.nodes[0]
    node.pause()
    try:
        dst[:] = 0
        t = time.monotonic()
        state = read_objects(agent, dst, objects)
        elapsed = time.monotonic() - t
        assert state.startswith("ERR"), f"{state} after {elapsed:.3f}s with {node.data} stopped"
        assert 2.5 < elapsed < 6, f"READ ended after {elapsed:.2f}s with op_timeout_ms=3000"
        for i in range(n):
            region = dst[i * size : (i + 1) * size]
            assert not region.any() or np.array_equal(region, src[i * size : (i + 1) * size]), f"block {i}"
        more = buffer(n * size, seed=1152)
        register_dram(agent, more)
        t = time.monotonic()
        new_objects = [(d, i * size, size) for i, d in enumerate(dev_ids(1152, n))]
        assert write_objects(agent, more, new_objects).startswith("ERR")
        assert time.monotonic() - t < 6
        dst[:] = 0xA5
    finally:
        node.resume()
    # The node now answers the READ that timed out; none of that may land in the caller's memory
    # (reads are received straight into it, so the timed-out session must be gone).
    time.sleep(0.3)
    assert (dst == 0xA5).all(), "a timed-out READ wrote into the caller's memory after it failed"

    deadline = time.monotonic() + 10
    while True:
        dst[:] = 0
        state = read_objects(agent, dst, objects)
        if state == "DONE" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state == "DONE", f"no recovery after the node came back: {state}"
    assert np.array_equal(dst, src)


def expect_create_failure(capfd, params, *needles):
    """create_backend must raise, and the plugin's stderr line must name each needle."""
    capfd.readouterr()
    with pytest.raises(Exception):
        make_agent(params)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "MEMKV plugin: create_backend failed:" in ln]
    assert lines, f"no create_backend failure line on stderr:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_missing_license(cluster, tmp_path, capfd):
    absent = str(tmp_path / "absent.license")
    expect_create_failure(capfd, cluster.params(license=absent), "MEMKV_LICENSE", "absent.license")
    expect_create_failure(capfd, cluster.params(license=""), "MEMKV_LICENSE")


def test_expired_license(cluster, creds, tmp_path, capfd):
    # The CLI refuses a past expiry, so issue one that expires in 2 s and let it lapse.
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=2)
    lic = tmp_path / "short.license"
    lic.write_text(
        run(
            "license", "issue", "--signing-key", creds["_signing"], "--licensee", "expiring",
            "--expires", expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    make_agent(cluster.params(license=str(lic)))  # still valid now
    time.sleep(max(0.0, (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.1)
    expect_create_failure(capfd, cluster.params(license=str(lic)), "expired")


def test_license_from_untrusted_key(cluster, tmp_path, capfd):
    key = tmp_path / "rogue.key"
    run("license", "keygen", "--out", str(key))
    lic = run("license", "issue", "--signing-key", str(key), "--licensee", "rogue", "--days", "30")
    line = expect_create_failure(capfd, cluster.params(license=lic.strip()), "not trusted", "MEMKV_LICENSE_PUBKEY")
    assert "rogue" in line
    # Trusting that key makes the same license work.
    pub = run("license", "pubkey", "--signing-key", str(key)).strip()
    make_agent(cluster.params(license=lic.strip(), license_pubkey=pub))


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"bogus": "1"}, "bogus"),
        ({"num_connections": "0"}, "MEMKV_NUM_CONNECTIONS"),
        ({"servers": ""}, "MEMKV_SERVERS"),
        ({"auth_key": "00ff"}, "MEMKV_AUTH_KEY"),
        ({"op_timeout_ms": "soon"}, "MEMKV_OP_TIMEOUT_MS"),
        ({"namespace": "a/b"}, "MEMKV_NAMESPACE"),
    ],
)
def test_bad_params(cluster, capfd, extra, needle):
    expect_create_failure(capfd, cluster.params(**extra), needle)


def test_vram_registration_fails(cluster, capfd):
    agent = make_agent(cluster.params())
    host = buffer(4096)
    capfd.readouterr()
    with pytest.raises(Exception):
        agent.register_memory([(addr(host), 4096, 0, "")], "VRAM", backends=["MEMKV"])
    err = capfd.readouterr().err
    assert "VRAM_SEG" in err and "GPU memory needs the CUDA driver" in err, err
    # The agent is fine afterwards.
    register_dram(agent, host)
    (dev,) = dev_ids(1201, 1)
    assert write_objects(agent, host, [(dev, 0, 4096)]) == "DONE"


def test_write_with_a_gap_fails(cluster, capfd):
    agent = make_agent(cluster.params())
    src = buffer(8192, seed=1301)
    register_dram(agent, src)
    (dev,) = dev_ids(1301, 1)
    with registered(agent, [(0, 8192, dev, "")]):
        capfd.readouterr()
        state = transfer(agent, "WRITE", [(addr(src), 4096)], [(4096, 4096, dev)])
        assert state.startswith("ERR"), state
        assert "unwritten" in capfd.readouterr().err
        # Nothing became visible.
        assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [None]
        # Two pieces that overlap are refused as well; two that tile the object are fine.
        local = [(addr(src), 4096), (addr(src, 2048), 4096)]
        overlap = transfer(agent, "WRITE", local, [(0, 4096, dev), (2048, 4096, dev)])
        assert overlap.startswith("ERR"), overlap
        assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [None]
        local = [(addr(src, 4096), 4096), (addr(src), 4096)]
        assert transfer(agent, "WRITE", local, [(4096, 4096, dev), (0, 4096, dev)]) == "DONE"
        assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [{"size": "8192"}]


def test_read_past_the_end_fails(cluster):
    agent = make_agent(cluster.params())
    src, dst = buffer(4096, seed=1401), buffer(8192)
    register_dram(agent, src, dst)
    (dev,) = dev_ids(1401, 1)
    # The registration is larger than the object, so NIXL lets the request through to MEMKV.
    with registered(agent, [(0, 8192, dev, "")]):
        assert transfer(agent, "WRITE", [(addr(src), 4096)], [(0, 4096, dev)]) == "DONE"
        assert transfer(agent, "READ", [(addr(dst), 4096)], [(2048, 4096, dev)]).startswith("ERR")
        assert transfer(agent, "READ", [(addr(dst), 1)], [(4096, 1, dev)]).startswith("ERR")
        assert transfer(agent, "READ", [(addr(dst), 8192)], [(0, 8192, dev)]).startswith("ERR")
        # The last bytes and the whole object still read fine.
        assert transfer(agent, "READ", [(addr(dst), 1)], [(4095, 1, dev)]) == "DONE"
        assert dst[0] == src[4095]
        assert transfer(agent, "READ", [(addr(dst), 4096)], [(0, 4096, dev)]) == "DONE"
        assert np.array_equal(dst[:4096], src)
    # A range outside the registration is refused by NIXL itself.
    with registered(agent, [(0, 4096, dev, "")]):
        assert transfer(agent, "READ", [(addr(dst), 4096)], [(2048, 4096, dev)]).startswith("ERR:init")


def test_read_of_absent_object_is_not_found(cluster):
    agent = make_agent(cluster.params())
    dst = buffer(MIB)
    register_dram(agent, dst)
    (dev,) = dev_ids(1501, 1)
    state = read_objects(agent, dst, [(dev, 0, MIB)])
    assert state.startswith("ERR"), state
    if state != "ERR:ERR":  # nixl >= 1.5 (and some older builds) raise a typed error
        assert "NotFound" in state or "NOT_FOUND" in state, state
    assert not dst.any()


def test_repost_after_error_and_while_active(cluster):
    """A READ that failed (absent object) can be posted again once the object exists; posting a
    request that is still running is refused and does not disturb it."""
    agent = make_agent(cluster.params())
    size = 16 * MIB  # takes milliseconds, so the second post below finds it running
    src, dst = buffer(size, seed=1601), buffer(size)
    register_dram(agent, src, dst)
    (dev,) = dev_ids(1601, 1)
    with registered(agent, [(0, size, dev, "")]):
        get = agent.initialize_xfer(
            "READ",
            agent.get_xfer_descs([(addr(dst), size, 0)], "DRAM"),
            agent.get_xfer_descs([(0, size, dev)], "OBJ"),
            agent.name,
        )
        try:
            assert wait(agent, get).startswith("ERR")
            assert not dst.any()
            assert transfer(agent, "WRITE", [(addr(src), size)], [(0, size, dev)]) == "DONE"
            assert wait(agent, get) == "DONE"
            assert np.array_equal(dst, src)

            dst[:] = 0
            assert agent.transfer(get) == "PROC"
            try:
                again = agent.transfer(get)
            except Exception as e:  # nixl >= 1.5: nixlRepostActiveError
                again = f"ERR:{type(e).__name__}"
            assert again.startswith("ERR"), again
            deadline = time.monotonic() + 10
            state = "PROC"
            while state == "PROC" and time.monotonic() < deadline:
                state = agent.check_xfer_state(get)
            assert state == "DONE"
            assert np.array_equal(dst, src)
        finally:
            agent.release_xfer_handle(get)


def test_key_length_limit(cluster, capfd):
    """Keys (namespace + "/" + metaInfo) up to 512 bytes work; a longer one cannot be registered."""
    agent = make_agent(cluster.params(namespace="ns"))
    src, dst = buffer(4096, seed=1701), buffer(4096)
    register_dram(agent, src, dst)
    longest = "k" * (512 - len("ns/"))
    with registered(agent, [(0, 4096, 17, longest)]):
        assert transfer(agent, "WRITE", [(addr(src), 4096)], [(0, 4096, 17)]) == "DONE"
        assert transfer(agent, "READ", [(addr(dst), 4096)], [(0, 4096, 17)]) == "DONE"
    assert np.array_equal(dst, src)
    assert agent.query_memory([(0, 1, 0, longest)], "MEMKV", "OBJ") == [{"size": "4096"}]
    capfd.readouterr()
    with pytest.raises(Exception):
        agent.register_memory([(0, 4096, 18, longest + "k")], "OBJ", backends=["MEMKV"])
    assert "cannot register OBJ_SEG" in capfd.readouterr().err


def test_notification_is_refused(cluster):
    """MEMKV sends no notifications: a request that asks for one cannot be created."""
    agent = make_agent(cluster.params())
    src = buffer(4096, seed=1801)
    register_dram(agent, src)
    (dev,) = dev_ids(1801, 1)
    with registered(agent, [(0, 4096, dev, "")]):
        with pytest.raises(Exception):
            agent.initialize_xfer(
                "WRITE",
                agent.get_xfer_descs([(addr(src), 4096, 0)], "DRAM"),
                agent.get_xfer_descs([(0, 4096, dev)], "OBJ"),
                agent.name,
                b"done",
            )
        assert agent.query_memory([(0, 1, dev, "")], "MEMKV", "OBJ") == [None]
