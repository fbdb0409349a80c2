"""The plugin's own metrics (MEMKV_PROMETHEUS_BIND): the MR cache and registry counters of one
backend, served at /metrics while KVBM-shaped transfers run."""

import socket
import urllib.request

from conftest import MIB, addr, buffer, dev_ids, make_agent, register_dram, registered, transfer


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def metrics(bind):
    with urllib.request.urlopen(f"http://{bind}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_endpoint_shows_registrations_and_cache_hits(cluster):
    ip = "127.0.3.251"  # above the cluster fixture's range (.1-.250)
    bind = f"{ip}:{free_port(ip)}"
    agent = make_agent(cluster.params(prometheus_bind=bind))
    pool = buffer(8 * MIB, seed=5)
    back = buffer(8 * MIB)
    register_dram(agent, pool, back)
    m = metrics(bind)
    assert m["memkv_client_regions"] == 2
    assert m["memkv_client_host_registered_bytes"] == 16 * MIB
    assert m["memkv_client_mr_cache_entries"] == 2
    hits = m["memkv_client_mr_cache_hits_total"]

    hashes = dev_ids(11, 4)
    remote = [(0, 2 * MIB, h) for h in hashes]
    with registered(agent, [(0, 2 * MIB, h, "") for h in hashes]):
        assert transfer(agent, "WRITE", [(addr(pool, i * 2 * MIB), 2 * MIB) for i in range(4)], remote) == "DONE"
        assert transfer(agent, "READ", [(addr(back, i * 2 * MIB), 2 * MIB) for i in range(4)], remote) == "DONE"
    assert (back == pool).all()
    m = metrics(bind)
    # Each of the 8 local descriptors was looked up once, at prep, and hit its registration.
    assert m["memkv_client_mr_cache_hits_total"] == hits + 8, m
    assert m["memkv_client_mr_cache_misses_total"] == 2, "only the two registrations missed"
