"""``python -m nuraft_mesg.testing.chaos``: one chaos run, its summary table, exit 1 on any
violation (the run's directory then holds the history, the seed and the node logs)."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from nuraft_mesg.testing.chaos.net import NetUnavailable
from nuraft_mesg.testing.chaos.rig import NEMESES, RigConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nuraft-chaos", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--loaded-groups", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--nemesis", action="append", choices=NEMESES,
                        help="only these faults (repeat; default: all)")
    parser.add_argument("--out", type=Path, help="the run's directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the directory on success")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    cfg = RigConfig(nodes=args.nodes, seconds=args.minutes * 60, seed=seed, groups=args.groups,
                    loaded_groups=args.loaded_groups, clients=args.clients,
                    nemeses=tuple(args.nemesis or NEMESES), out_dir=args.out, keep=args.keep)
    try:
        report = run(cfg)
    except NetUnavailable as exc:
        print(f"chaos: cannot run here: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if not report.ok:
        replay = " ".join(
            ["python3 tools/dev.py chaos", f"--nodes {cfg.nodes}", f"--minutes {args.minutes:g}",
             f"--seed {seed}", f"--groups {cfg.groups}"]
            + [f"--nemesis {n}" for n in args.nemesis or ()])
        print(f"chaos: FAILED; history, seed and node logs in {report.directory}\n"
              f"chaos: replay with: {replay}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
