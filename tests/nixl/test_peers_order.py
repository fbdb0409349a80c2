"""benches/peers/peers.py's order of measurement: the systems rotate round by round, and the rows
issue 7's closest targets compare (memkv-nixl with memkv and memkv-pool, memkv-nixl-shm with
memkv-shm, redis with memkv-1t-batch4 and memkv-shm-1t-batch16) are always measured next to each
other, each side first in turn; the per-round ratio that each verdict against one named system
is judged by; and the pooling of several runs' rounds (`--from-csv A.csv B.csv`)."""

import argparse
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benches" / "peers"))
import peers  # noqa: E402


def test_compared_rows_run_side_by_side_in_every_round_and_take_turns_first():
    systems = list(peers.SYSTEMS)
    firsts = []
    for rnd in range(1, 2 * len(systems) + 1):
        order = peers.round_order(systems, rnd)
        assert sorted(order) == sorted(systems), f"round {rnd} measures each system once: {order}"
        at = order.index
        assert abs(at("memkv-nixl") - at("memkv")) == 1, order
        assert abs(at("memkv-nixl") - at("memkv-pool")) == 1, order
        assert abs(at("memkv-nixl-shm") - at("memkv-shm")) == 1, order
        assert (at("memkv-shm") < at("memkv-nixl-shm")) == (rnd % 2 == 1), f"round {rnd}: {order}"
        assert abs(at("redis") - at("memkv-1t-batch4")) == 1, order
        assert abs(at("redis") - at("memkv-shm-1t-batch16")) == 1, order
        assert (at("memkv-1t-batch4") < at("redis")) == (rnd % 2 == 1), f"round {rnd}: {order}"
        firsts.append(order[0])
    # The units (three groups, and every other system alone) rotate by one each round: every
    # unit leads once in any run of as many rounds as there are units.
    unit = {m: i for i, g in enumerate(peers.GROUPS) for m in g}
    leaders = [unit.get(f, f) for f in firsts]
    units = len(systems) - sum(len(g) - 1 for g in peers.GROUPS)
    assert units == 8
    assert all(len(set(leaders[r:r + units])) == units for r in range(len(leaders) - units + 1)), leaders


def test_a_subset_keeps_only_the_groups_it_has():
    assert peers.round_order(["redis", "memkv-nixl-shm", "mooncake"], 1) == ["redis", "memkv-nixl-shm", "mooncake"]
    assert peers.round_order(["memkv-pool", "redis", "memkv"], 1) == ["memkv", "memkv-pool", "redis"]
    assert peers.round_order(["memkv-pool", "redis", "memkv"], 2) == ["redis", "memkv-pool", "memkv"]


def test_the_per_round_ratio_is_the_median_of_each_rounds_own_ratio():
    # (round, system, op, block, GiB/s): the rounds drift together, so the ratio of the medians
    # (2.5 / 2.4) says less about the pair than each round's own ratio does.
    rows = [(1, "a", "put", 4096, 1.0), (1, "b", "put", 4096, 1.0),
            (2, "a", "put", 4096, 2.0), (2, "b", "put", 4096, 2.4),
            (3, "a", "put", 4096, 3.0), (3, "b", "put", 4096, 2.9),
            (3, "a", "get", 4096, 9.0), (4, "a", "put", 4096, 5.0)]
    assert peers.round_ratio(rows, "a", "b", "put", 4096) == 1.0
    # Rounds where only one side measured do not count; one round alone gives no figure.
    assert peers.round_ratio(rows[:2] + rows[-1:], "a", "b", "put", 4096) is None
    assert peers.round_ratio(rows, "a", "b", "get", 4096) is None


def report_targets(rows):
    """The target lines of the report of `rows` ((round, system, op, block, GiB/s), 4 KiB only)."""
    a = argparse.Namespace(from_csv=None, out=ROOT / "peers-test", seconds=1, verify_every=16)
    full = [(rnd, name, op, block, gib, gib * 2**30 / block, 100.0, True, 0.0) for rnd, name, op, block, gib in rows]
    ceilings = [{"iperf3 -P 1": 5.0}]
    systems = sorted({r[1] for r in rows})
    md = peers.report(a, [4096], systems, full, ceilings, "other processes: none", [], [], "today")[0]
    return [line for line in md.splitlines() if line.startswith("- ")]


def pair_rows(pairs):
    """Rows of memkv-1t-batch4 and redis, PUT and GET 4 KiB, one (ours, theirs) pair per round."""
    return [(rnd, name, op, 4096, gib) for rnd, (ours, theirs) in enumerate(pairs, 1) for op in ("put", "get")
            for name, gib in (("memkv-1t-batch4", ours), ("redis", theirs))]


def test_a_verdict_is_judged_by_the_per_round_ratio_not_the_ratio_of_the_medians():
    # memkv-1t-batch4 against redis, PUT 4 KiB: both drift together over the rounds. The medians
    # (1.2 vs 1.1) make 1.09x, yet in every round but one batch4 was the slower of the two.
    pairs = [(1.0, 1.05), (1.2, 1.25), (1.4, 1.1), (0.9, 0.95), (1.3, 1.35)]
    rows = pair_rows(pairs)
    line = next(t for t in report_targets(rows) if t.startswith("- 4 KiB and 64 KiB, memkv-1t-batch4"))
    assert "**not met**" in line, line
    assert "PUT 4 KiB 0.96x (per round; medians 1.200 vs 1.100, 1.09x) ✗" in line, line
    # The same rows with batch4 ahead in four rounds of five meet it.
    pairs = [(1.1, 1.05), (1.3, 1.25), (0.9, 1.1), (1.0, 0.95), (1.4, 1.35)]
    rows = pair_rows(pairs)
    line = next(t for t in report_targets(rows) if t.startswith("- 4 KiB and 64 KiB, memkv-1t-batch4"))
    assert line.startswith("- 4 KiB and 64 KiB, memkv-1t-batch4 (one thread per process and 4 blocks per request, "
                           "as Redis's pipeline of 4) ≥ redis: **met**"), line


def run(meta, ratios):
    """One run's (rows, ceilings, failures, meta): memkv-1t-batch4 and redis, PUT 4 KiB, one round
    per (ours, theirs) pair."""
    rows = [(rnd, name, "put", 4096, gib, gib * 2**30 / 4096, 100.0, True, 0.0)
            for rnd, (ours, theirs) in enumerate(ratios, 1)
            for name, gib in (("memkv-1t-batch4", ours), ("redis", theirs))]
    return rows, [{"iperf3 -P 1": 5.0}] * len(ratios), [], meta


def test_pooled_runs_are_judged_as_one_longer_run_would_be(monkeypatch):
    monkeypatch.setattr(peers, "code_differs", lambda a, b: False)
    first = run("2026-11-27; commit aaaaaaa; 2 CPUs", [(0.9, 1.0), (0.95, 1.0), (1.2, 1.0)])
    second = run("2026-11-28; commit bbbbbbb; 2 CPUs", [(1.1, 1.0), (1.05, 1.0)])
    rows, ceilings, failures, meta = peers.pool([first, second])
    assert [r[0] for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert len(ceilings) == 5 and failures == []
    assert meta == ("2026-11-27; commit aaaaaaa; 2 CPUs (rounds 1-3) + 2026-11-28; commit bbbbbbb; 2 CPUs (rounds 4-5)")
    # The first run alone misses (median of 0.9, 0.95, 1.2); the five rounds together meet.
    assert peers.round_ratio(first[0], "memkv-1t-batch4", "redis", "put", 4096) == 0.95
    assert peers.round_ratio(rows, "memkv-1t-batch4", "redis", "put", 4096) == 1.05
    # One run is passed through as it is.
    assert peers.pool([first]) == first


def test_runs_of_different_code_are_not_pooled(monkeypatch):
    asked = []
    monkeypatch.setattr(peers, "code_differs", lambda a, b: asked.append((a, b)) or True)
    try:
        peers.pool([run("d; commit aaaaaaa; 2 CPUs", [(1.0, 1.0)]), run("d; commit bbbbbbb; 2 CPUs", [(1.0, 1.0)])])
    except SystemExit as e:
        assert "commits aaaaaaa and bbbbbbb differ outside docs/" in str(e), e
    else:
        raise AssertionError("runs of different code were pooled")
    assert asked == [("aaaaaaa", "bbbbbbb")]


def test_code_differs_asks_git_and_says_none_where_it_cannot_tell():
    assert peers.code_differs("HEAD", "HEAD") is False
    assert peers.code_differs("HEAD", "0000000") is None
