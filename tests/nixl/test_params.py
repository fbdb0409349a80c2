"""The plugin as NIXL sees it: advertised params and memory types, and the three ways to configure
it (plugin params, params under their MEMKV_* names, the process environment)."""

import numpy as np
import pytest

from conftest import (
    KIB,
    buffer,
    dev_ids,
    make_agent,
    nixl_agent,
    nixl_agent_config,
    read_objects,
    register_dram,
    run_worker,
    worker_env,
    write_objects,
)

CLIENT_KEYS = {
    "servers",
    "auth_key",
    "license",
    "license_pubkey",
    "namespace",
    "num_connections",
    "op_timeout_ms",
    "connect_timeout_ms",
    "io_threads",
    "transport",
    "payload_mac",
    "rdma_devices",
    "gpu_nic_map",
    "staging_size_mb",
    "staging_slot_mb",
    "mr_cache_max_entries",
    "mr_cache_max_gb",
    "prometheus_bind",
    "stats_interval_s",
    "rdma_gid_index",
    "rdma_traffic_class",
    "rdma_service_level",
    "rdma_timeout_secs",
    "rdma_cq_poll_us",
    "rdma_queue_depth",
    "config",
}


@pytest.fixture
def bare_agent():
    return nixl_agent("memkv-params-probe", nixl_agent_config(backends=[]))


def test_plugin_is_discovered(bare_agent):
    assert "MEMKV" in bare_agent.get_plugin_list()


def test_plugin_params_list_every_client_setting_with_defaults(bare_agent):
    params = bare_agent.get_plugin_params("MEMKV")
    assert set(params) == CLIENT_KEYS
    assert params["num_connections"] == "4"
    assert params["io_threads"] == "auto"
    assert params["op_timeout_ms"] == "10000"
    assert params["connect_timeout_ms"] == "2000"
    assert params["transport"] == "auto"
    assert params["payload_mac"] == "false"
    assert params["staging_size_mb"] == "256"
    assert params["staging_slot_mb"] == "16"
    assert params["mr_cache_max_gb"] == "1024"
    assert params["rdma_gid_index"] == "auto"
    assert params["rdma_queue_depth"] == "128"
    # Required settings and ones without a default are listed empty.
    for k in ("servers", "auth_key", "license", "license_pubkey", "namespace", "config"):
        assert params[k] == "", k
    # No server-side setting leaks into the client plugin's list.
    assert not {"listen", "memory", "admin_listen", "node_id"} & set(params)


def test_plugin_mem_types(bare_agent):
    assert set(bare_agent.get_plugin_mem_types("MEMKV")) == {"DRAM_SEG", "VRAM_SEG", "OBJ_SEG"}


def test_backend_reports_params_and_mem_types(cluster):
    params = cluster.params(namespace="ns")
    agent = make_agent(params)
    assert set(agent.get_backend_mem_types("MEMKV")) == {"DRAM_SEG", "VRAM_SEG", "OBJ_SEG"}
    # NIXL hands back the params the backend was created with.
    assert agent.get_backend_params("MEMKV") == params


def round_trip(agent, seed, n=4, size=64 * KIB):
    src, dst = buffer(n * size, seed), buffer(n * size)
    register_dram(agent, src, dst)
    objects = [(d, i * size, size) for i, d in enumerate(dev_ids(seed, n))]
    assert write_objects(agent, src, objects) == "DONE"
    assert read_objects(agent, dst, objects) == "DONE"
    assert np.array_equal(dst, src)


def test_params_by_env_name(cluster, capfd):
    p = cluster.params()
    env_style = {f"MEMKV_{k.upper()}": v for k, v in p.items()}
    env_style["MEMKV_NUM_CONNECTIONS"] = "2"
    round_trip(make_agent(env_style), seed=1601)
    # The env-style key is really read: an invalid value there is refused, naming it.
    capfd.readouterr()
    with pytest.raises(Exception):
        make_agent({**env_style, "MEMKV_NUM_CONNECTIONS": "0"})
    assert 'MEMKV_NUM_CONNECTIONS="0"' in capfd.readouterr().err
    # Mixed forms work together; the same setting twice with different values is refused.
    round_trip(make_agent({**p, "MEMKV_IO_THREADS": "1", "num_connections": "1"}), seed=1602)
    with pytest.raises(Exception):
        make_agent({**p, "num_connections": "2", "MEMKV_NUM_CONNECTIONS": "3"})
    assert "MEMKV_NUM_CONNECTIONS is given twice" in capfd.readouterr().err


def test_config_from_process_env(cluster):
    """create_backend("MEMKV", {}) in a process whose environment carries the MEMKV_* settings."""
    env = worker_env(cluster.env(namespace="from-env"))
    ids, size, seed = dev_ids(1701, 3), 128 * KIB, 1701
    got = run_worker({"op": "roundtrip", "params": {}, "ids": ids, "size": size, "seed": seed}, env=env)
    assert got == {"write": "DONE", "read": "DONE", "match": [True] * 3}
    # MEMKV_NAMESPACE applied: the objects are under "from-env", not in the default namespace.
    q = [(0, 1, d, "") for d in ids]
    assert make_agent(cluster.params(namespace="from-env")).query_memory(q, "MEMKV", "OBJ") == [{"size": str(size)}] * 3
    assert make_agent(cluster.params()).query_memory(q, "MEMKV", "OBJ") == [None] * 3


def test_explicit_params_override_process_env(cluster, monkeypatch):
    monkeypatch.setenv("MEMKV_SERVERS", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("MEMKV_NAMESPACE", "env-ns")
    agent = make_agent(cluster.params(namespace="param-ns"))
    round_trip(agent, seed=1801, n=2)
    q = [(0, 1, d, "") for d in dev_ids(1801, 2)]
    found = make_agent(cluster.params(namespace="param-ns")).query_memory(q, "MEMKV", "OBJ")
    assert found == [{"size": str(64 * KIB)}] * 2
    assert make_agent(cluster.params(namespace="env-ns")).query_memory(q, "MEMKV", "OBJ") == [None] * 2


@pytest.mark.parametrize("key", ["memory", "listen", "MEMKV_NODE_ID"])
def test_server_only_settings_are_refused(cluster, capfd, key):
    """A memkv-server setting given to the plugin is an error naming it, not silently ignored."""
    capfd.readouterr()
    with pytest.raises(Exception):
        make_agent(cluster.params(**{key: "1"}))
    line = [ln for ln in capfd.readouterr().err.splitlines() if "create_backend failed" in ln]
    assert line and f"`{key}`" in line[0] and "memkv-server setting" in line[0], line
