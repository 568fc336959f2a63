"""Run by the interpreter of a fresh virtualenv holding only the installed wheel (never the
source tree): every module imports, the package data is there, and three nodes form a group,
commit a write and answer a status call.  Exits non-zero (with a traceback) on any failure.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tempfile
import uuid
from pathlib import Path

import trio

import nuraft_mesg

# Modules that need an optional extra (or the dev toolchain): importing them may fail with
# ModuleNotFoundError for that dependency, never for a nuraft_mesg module.
OPTIONAL = {"prometheus_client", "hypothesis"}


def check_installed_files() -> None:
    package = Path(nuraft_mesg.__file__).parent
    prefix = Path(sys.prefix).resolve()
    assert prefix in package.resolve().parents, f"imported from {package}, not the venv"
    assert (package / "py.typed").is_file(), "py.typed missing"
    stubs = sorted(p.name for p in (package / "transport" / "_proto").glob("*_pb2.pyi"))
    modules = sorted(p.name for p in (package / "transport" / "_proto").glob("*_pb2.py"))
    assert modules and [m + "i" for m in modules] == stubs, (modules, stubs)
    for info in pkgutil.walk_packages([str(package)], "nuraft_mesg."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL:
                raise
    from importlib.metadata import version

    assert version("nuraft_mesg") == nuraft_mesg.__version__


async def three_nodes(data_dir: str) -> None:
    from nuraft_mesg import ExternalClient, RaftParams
    from nuraft_mesg.testing.local import LocalCluster

    gid = str(uuid.uuid4())
    params = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
    with trio.fail_after(30):
        async with LocalCluster.open(3, group_types={"kv": params}, default_group_type="kv",
                                     data_dir=data_dir) as cluster:
            first, *others = cluster.nodes
            await first.mgr.create_group(gid, "kv")
            for node in others:
                await first.mgr.add_member(gid, node.uuid)
            assert await first.mgr.append_entries(gid, [b"set smoke 1"]) == [b"OK"]
            async with ExternalClient(dict(cluster.directory)) as client:
                status = await client.status(first.uuid, (gid,))
            (group,) = status.groups
            assert group.is_leader and len(group.members) == 3, group
            assert group.commit_index >= 1, group
    print(f"wheel smoke ok: nuraft_mesg {nuraft_mesg.__version__} on Python "
          f"{sys.version.split()[0]}, leader {group.leader_id[:8]} term {group.term} "
          f"commit {group.commit_index}")


def main() -> None:
    check_installed_files()
    with tempfile.TemporaryDirectory() as data_dir:
        trio.run(three_nodes, data_dir)


if __name__ == "__main__":
    main()
