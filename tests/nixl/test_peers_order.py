"""benches/peers/peers.py's order of measurement: the systems rotate round by round, and the rows
issue 7's NIXL target compares (memkv-nixl with memkv and memkv-pool, memkv-nixl-shm with
memkv-shm) are always measured next to each other, each side first in turn; and the per-round
ratio the report gives beside each verdict against one named system."""

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
        firsts.append(order[0])
    # The units (10 here: two groups and eight systems alone) rotate by one each round: every
    # unit leads once in any 10 rounds in a row.
    unit = {m: i for i, g in enumerate(peers.GROUPS) for m in g}
    leaders = [unit.get(f, f) for f in firsts]
    units = len(systems) - 3
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
