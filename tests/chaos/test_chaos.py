"""The chaos rig's short profile (issue J): 3 real node processes in network namespaces, every
nemesis, a fixed seed, about 2.5 minutes; any violation fails the test with the rig's summary
and the directory holding the history, the seed and the node logs.  Skipped where the rig
cannot build its network (not root, no ``ip``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nuraft_mesg.testing.chaos import NEMESES, RigConfig, run
from nuraft_mesg.testing.chaos.net import probe

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(600),
    pytest.mark.skipif(probe() != "", reason=f"chaos rig needs network namespaces: {probe()}"),
]

SEED = 20261204


def test_short_profile_has_no_violation(tmp_path: Path) -> None:
    cfg = RigConfig(nodes=3, seconds=100.0, seed=SEED, groups=20, loaded_groups=3, clients=4,
                    out_dir=tmp_path / "run", keep=True, log=lambda _: None)
    report = run(cfg)
    table = report.table()
    print(table)
    assert report.ok, f"{table}\nhistory, seed and logs in {report.directory}; replay: " \
                      f"python3 tools/dev.py chaos --nodes 3 --seed {SEED} --groups 20"
    injected = {f.kind for f in report.faults}
    assert injected == set(NEMESES), f"not every nemesis ran: {sorted(set(NEMESES) - injected)}"
    assert sum(1 for op in report.ops if op.type == "ok") > 500
