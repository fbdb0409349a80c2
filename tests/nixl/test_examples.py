"""The examples in examples/ run as documented against a real cluster and say what they did."""

import subprocess
import sys

from conftest import BIN, ROOT, STUBS, TORCH_STUBBED, worker_env


def test_kvbm_offload_example(cluster):
    env = worker_env({**cluster.env(), "NIXL_PLUGIN_DIR": str(BIN)})
    if TORCH_STUBBED:
        env["PYTHONPATH"] = str(STUBS)
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "kvbm_offload.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    out = p.stdout
    assert "offloaded 16 blocks of 2 MiB" in out, out
    assert "queryMem: 16/16 present, unknown hash -> None" in out, out
    assert "onboarded 16 blocks: identical to the offloaded bytes" in out, out
