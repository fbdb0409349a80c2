"""Fixtures for the NIXL plugin tests: real memkv-server processes on 127.0.3.x, a dev cluster
key and license made for the session, and NIXL agents from the nixl-cu12 wheel with
libplugin_MEMKV.so found through NIXL_PLUGIN_DIR.

Binaries come from MEMKV_BIN_DIR (default: target/release); scripts/test-nixl.sh builds them.
"""

import contextlib
import importlib.util
import json
import os
import re
import signal
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
# nixl-cu12 1.3.2 imports torch; without a real one, stubs/torch stands in (see its docstring).
STUBS = Path(__file__).parent / "stubs"
TORCH_STUBBED = importlib.util.find_spec("torch") is None
if TORCH_STUBBED:
    sys.path.insert(0, str(STUBS))

from nixl_cu12._api import nixl_agent, nixl_agent_config  # noqa: E402

KIB = 1 << 10
MIB = 1 << 20
WORKER = Path(__file__).parent / "worker.py"
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


@pytest.fixture(autouse=True)
def no_memkv_env(monkeypatch):
    """Every test starts without MEMKV_* variables, so only the params it passes configure the
    plugin (the plugin also reads the process environment)."""
    for k in list(os.environ):
        if k.startswith("MEMKV_"):
            monkeypatch.delenv(k)


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

    def pause(self):
        """Freezes the node (SIGSTOP): its connections stay open but nothing answers. Returns once
        every thread of it has stopped: kill(2) only queues the signal, and a thread the kernel
        has not yet stopped could still answer a request sent right after this."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not self._stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"memkv-server {self.proc.pid} did not stop within 10 s of SIGSTOP")
            time.sleep(0.001)

    def _stopped(self):
        """Whether every thread of the node is in the stopped state ('T' in /proc/PID/task/*/stat)."""
        task = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/stat") as f:
                    # The state follows the command name, which is in parentheses.
                    if f.read().rsplit(")", 1)[1].split()[0] != "T":
                        return False
            except FileNotFoundError:
                continue  # a thread that exited meanwhile
        return True

    def resume(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.resume()
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

    def env(self, **extra):
        """The same settings as MEMKV_* variables, for a process configured from its environment."""
        return {f"MEMKV_{k.upper()}": v for k, v in self.params(**extra).items()}


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
    return np.frombuffer(np.random.default_rng(seed).bytes(nbytes), dtype=np.uint8).copy()


def error_text(e):
    """"<ExceptionType>:<message>" for a NIXL failure (message may be empty)."""
    return f"{type(e).__name__}:{e}"


def wait(agent, handle, timeout=15.0):
    """Posts a transfer and polls it to its end; returns "DONE", "TIMEOUT" or "ERR:<why>"
    (nixl >= 1.5 raises nixl*Error for negative statuses, older versions may answer "ERR")."""
    deadline = time.monotonic() + timeout
    try:
        state = agent.transfer(handle)
        while state == "PROC":
            if time.monotonic() > deadline:
                return "TIMEOUT"
            time.sleep(0.0005)
            state = agent.check_xfer_state(handle)
    except Exception as e:
        return f"ERR:{error_text(e)}"
    return state if state == "DONE" else f"ERR:{state}"


def transfer(agent, op, local, remote, timeout=15.0):
    """One request: local [(addr, len)] DRAM pieces to/from remote [(offset, len, devId)] objects.
    Returns "DONE", "TIMEOUT" or "ERR:<why>"; a request NIXL or the plugin refuses to create
    (initialize_xfer fails) is "ERR:init:<why>"."""
    try:
        h = agent.initialize_xfer(
            op,
            agent.get_xfer_descs([(a, n, 0) for a, n in local], "DRAM"),
            agent.get_xfer_descs(list(remote), "OBJ"),
            agent.name,
        )
    except Exception as e:
        return f"ERR:init:{error_text(e)}"
    try:
        return wait(agent, h, timeout)
    finally:
        agent.release_xfer_handle(h)


def addr(arr, offset=0):
    """Address of byte `offset` of a numpy array."""
    return arr.ctypes.data + offset


def dev_ids(seed, n):
    """n distinct random 64-bit devIds (sequence-hash-like); the first is always >= 2**63."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        v = int(rng.integers(0, 2**64, dtype=np.uint64))
        if not out:
            v |= 1 << 63
        if v not in out:
            out.append(v)
    return out


@contextlib.contextmanager
def registered(agent, descs, mem="OBJ"):
    """Registers [(addr, len, devId, metaInfo)] with MEMKV for the block, then deregisters them."""
    reg = agent.register_memory(list(descs), mem, backends=["MEMKV"])
    try:
        yield reg
    finally:
        agent.deregister_memory(reg, backends=["MEMKV"])


def register_dram(agent, *arrays):
    """Registers numpy arrays as DRAM with MEMKV (kept until the agent goes)."""
    return agent.register_memory([(addr(a), a.nbytes, 0, "") for a in arrays], "DRAM", backends=["MEMKV"])


def write_objects(agent, src, objects):
    """WRITE whole objects in one request: objects = [(devId, src_offset, size)], each object's
    bytes taken from src[src_offset:src_offset+size]; registers/deregisters the OBJ descs."""
    with registered(agent, [(0, n, d, "") for d, _, n in objects]):
        return transfer(agent, "WRITE", [(addr(src, o), n) for _, o, n in objects], [(0, n, d) for d, _, n in objects])


def read_objects(agent, dst, objects):
    """READ whole objects in one request into dst (same shape as write_objects)."""
    with registered(agent, [(0, n, d, "") for d, _, n in objects]):
        return transfer(agent, "READ", [(addr(dst, o), n) for _, o, n in objects], [(0, n, d) for d, _, n in objects])


def worker_env(extra=None):
    """Environment for a worker subprocess: this one without MEMKV_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
    env.update(extra or {})
    return env


def run_worker(job, env=None, timeout=30):
    """Runs worker.py (a separate process with its own NIXL agent) on the JSON `job` with this
    interpreter; returns its JSON answer. Fails the test with the worker's output otherwise."""
    p = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env() if env is None else env,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        pytest.fail(f"worker {job.get('op')} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}")
    return json.loads(lines[-1])
