"""Fixtures for the NIXL plugin tests: real memkv-server processes on 127.0.3.x, a dev cluster
key and license made for the session, and NIXL agents from the nixl-cu12 wheel with
libplugin_MEMKV.so found through NIXL_PLUGIN_DIR.

Binaries come from MEMKV_BIN_DIR (default: target/release); scripts/test-nixl.sh builds them.
"""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MEMKV_BIN_DIR", ROOT / "target" / "release"))
PLUGIN = BIN / "libplugin_MEMKV.so"

# NIXL reads NIXL_PLUGIN_DIR once per process, when the first agent is made.
os.environ["NIXL_PLUGIN_DIR"] = str(BIN)
if importlib.util.find_spec("torch") is None:
    sys.path.insert(0, str(Path(__file__).parent / "stubs"))

from nixl_cu12._api import nixl_agent, nixl_agent_config  # noqa: E402

MIB = 1 << 20
READY = re.compile(r"memkv-server ready data=(\S+) admin=(\S+)")


def run(*args, env=None):
    return subprocess.run([str(BIN / "memkv"), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture(scope="session")
def creds(tmp_path_factory):
    """A dev signing key, license and cluster key, as MEMKV_* variables."""
    d = tmp_path_factory.mktemp("creds")
    signing = d / "signing.key"
    run("license", "keygen", "--out", str(signing))
    pub = run("license", "pubkey", "--signing-key", str(signing)).strip()
    lic = d / "minio.license"
    lic.write_text(run("license", "issue", "--signing-key", str(signing), "--licensee", "nixl-tests", "--days", "1"))
    key = run("keygen").strip()
    return {"MEMKV_AUTH_KEY": key, "MEMKV_LICENSE": str(lic), "MEMKV_LICENSE_PUBKEY": pub, "_signing": str(signing)}


class Node:
    def __init__(self, ip, creds, log_dir):
        env = {**os.environ, **{k: v for k, v in creds.items() if not k.startswith("_")}}
        self.log = open(log_dir / f"node-{ip}.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "memkv-server"), "--listen", f"{ip}:0", "--memory", "512MiB"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = READY.search(line)
            if m:
                self.data, self.admin = m.group(1), m.group(2)
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"memkv-server on {ip} did not start: {line!r}; see {self.log.name}")

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Cluster:
    def __init__(self, nodes, creds):
        self.nodes = nodes
        self.creds = creds
        self.servers = ",".join(n.data for n in nodes)

    def params(self, **extra):
        """Backend params for create_backend: the whole client config, passed explicitly."""
        p = {
            "servers": self.servers,
            "auth_key": self.creds["MEMKV_AUTH_KEY"],
            "license": self.creds["MEMKV_LICENSE"],
            "license_pubkey": self.creds["MEMKV_LICENSE_PUBKEY"],
            "op_timeout_ms": "3000",
            "connect_timeout_ms": "1000",
        }
        p.update({k: str(v) for k, v in extra.items()})
        return p


_next_net = [0]


@pytest.fixture
def cluster_factory(creds, tmp_path):
    """Starts clusters of n nodes on fresh 127.0.3.x addresses; all stopped after the test."""
    started = []

    def make(n=2):
        nodes = []
        for _ in range(n):
            _next_net[0] += 1
            nodes.append(Node(f"127.0.3.{_next_net[0] % 250 + 1}", creds, tmp_path))
            started.append(nodes[-1])
        return Cluster(nodes, creds)

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def cluster(cluster_factory):
    return cluster_factory(2)


_agents = [0]


def make_agent(params, name=None):
    """A NIXL agent with only the MEMKV backend."""
    _agents[0] += 1
    agent = nixl_agent(name or f"memkv-test-{os.getpid()}-{_agents[0]}", nixl_agent_config(backends=[]))
    agent.create_backend("MEMKV", params)
    return agent


def buffer(nbytes, seed=None):
    """Page-aligned-enough host memory as a numpy array, random bytes when seed is given."""
    if seed is None:
        return np.zeros(nbytes, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def wait(agent, handle, timeout=30.0):
    """Polls a posted transfer to its end; returns "DONE" or "ERR:<exception or state>"."""
    deadline = time.monotonic() + timeout
    try:
        state = agent.transfer(handle)
        while state == "PROC":
            if time.monotonic() > deadline:
                return "TIMEOUT"
            state = agent.check_xfer_state(handle)
    except Exception as e:  # nixl >= 1.5 raises nixl*Error for negative statuses
        return f"ERR:{type(e).__name__}"
    return state if state == "DONE" else f"ERR:{state}"


def transfer(agent, op, local, remote, timeout=30.0):
    """One request: local [(addr, len)] DRAM pieces to/from remote [(offset, len, devId)] objects."""
    h = agent.initialize_xfer(
        op,
        agent.get_xfer_descs([(a, n, 0) for a, n in local], "DRAM"),
        agent.get_xfer_descs(list(remote), "OBJ"),
        agent.name,
    )
    try:
        return wait(agent, h, timeout)
    finally:
        agent.release_xfer_handle(h)
