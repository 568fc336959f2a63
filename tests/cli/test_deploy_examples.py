"""The deployment examples (examples/deploy/, docs/deploy.md) stay valid.

What can be checked without Docker or a Kubernetes cluster: the YAML parses and its parts
agree with each other (selectors, names, members, mounts), the pod start script picks the
right uuid for its ordinal, the DNS template resolves through :class:`nuraft_mesg.DnsApplication`
as the pods are named, every option the examples pass exists in the command line, and the
readiness probe (``nuraft-ready``) tells a ready node from an unreachable one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from nuraft_mesg import DnsApplication
from nuraft_mesg.cli.remote import load_peers
from nuraft_mesg.discovery import load_peers_file

from . import PYTHON, ROOT, children, free_ports, run

DEPLOY = ROOT / "examples" / "deploy"
K8S = DEPLOY / "k8s"


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is not installed (the docs extra has it)")


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in _yaml().safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _k8s() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind in examples/deploy/k8s."""
    docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in _load(p)]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one manifest per kind"
    return by_kind


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _start_script(sts: dict[str, Any]) -> str:
    container = _container(sts)
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    return str(script)


def test_kubernetes_manifests_agree() -> None:
    kustomization = _load(K8S / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    m = _k8s()
    assert set(m) == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    sts, svc, pdb, cm = m["StatefulSet"], m["Service"], m["PodDisruptionBudget"], m["ConfigMap"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Headless, naming pods before they are ready (peers must meet to elect a leader).
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # One node down at a time keeps a majority of three.
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    members = cm["data"]["members"].split(",")
    assert len(members) == sts["spec"]["replicas"] == 3
    assert len({str(uuid.UUID(u)) for u in members}) == 3
    uuid.UUID(cm["data"]["create-group"])
    # The TLS and token files the node and its probe read are in mounted Secrets.
    container = _container(sts)
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "nuraft-tls"
    assert volumes["token"]["secret"]["secretName"] == "nuraft-token"
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    for text in (_start_script(sts), probe):
        for name in ("ca.crt", "tls.crt", "tls.key"):
            assert f"{mounts['tls']}/{name}" in text
        assert f"{mounts['token']}/token" in text
    assert mounts["data"] == "/data" and "--data-dir /data" in _start_script(sts)
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert container["ports"][0]["containerPort"] == svc["spec"]["ports"][0]["port"] == 7000


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in _yaml().safe_load_all(done.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"]


def _run_start_script(tmp_path: Path, pod: str) -> subprocess.CompletedProcess[str]:
    """The pod's start script, with a stand-in ``nuraft-mesg`` that prints its arguments."""
    m = _k8s()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nuraft-mesg"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "POD_NAME": pod,
           "POD_NAMESPACE": "prod", "NURAFT_MEMBERS": m["ConfigMap"]["data"]["members"],
           "NURAFT_CREATE_GROUP": m["ConfigMap"]["data"]["create-group"]}
    return subprocess.run(["sh", "-c", _start_script(m["StatefulSet"])], env=env,
                          capture_output=True, text=True, timeout=30)


def test_pod_start_script_picks_the_uuid_of_its_ordinal(tmp_path: Path) -> None:
    cm = _k8s()["ConfigMap"]["data"]
    members = cm["members"].split(",")
    for ordinal, member in enumerate(members):
        done = _run_start_script(tmp_path, f"nuraft-{ordinal}")
        assert done.returncode == 0, done.stderr
        argv = done.stdout.splitlines()
        assert argv[0] == "server"
        assert argv[argv.index("--uuid") + 1] == member
        assert argv[argv.index("--dns-members") + 1] == cm["members"]
        template = argv[argv.index("--peer-dns") + 1]
        assert template == "nuraft-{ordinal}.nuraft.prod.svc.cluster.local:7000"
        # Only the first pod bootstraps the group.
        assert ("--create-group" in argv) == (ordinal == 0)
        if ordinal == 0:
            assert argv[argv.index("--create-group") + 1] == cm["create-group"]
    done = _run_start_script(tmp_path, f"nuraft-{len(members)}")
    assert done.returncode != 0 and "no member uuid for ordinal 3" in done.stderr


def test_dns_template_names_the_statefulset_pods(tmp_path: Path) -> None:
    members = _k8s()["ConfigMap"]["data"]["members"].split(",")
    argv = _run_start_script(tmp_path, "nuraft-1").stdout.splitlines()
    template = argv[argv.index("--peer-dns") + 1]
    app = DnsApplication(members[1], template, members)
    assert app.lookup_peer(members[2]) == "nuraft-2.nuraft.prod.svc.cluster.local:7000"
    assert app.lookup_peer(members[0]) == "nuraft-0.nuraft.prod.svc.cluster.local:7000"
    assert app.peers() == [members[0], members[2]]


def test_compose_nodes_match_the_peers_file() -> None:
    compose = _load(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    assert len(services) == 3
    peers = load_peers_file(DEPLOY / "config" / "peers.toml")
    assert load_peers(DEPLOY / "config" / "peers.toml") == peers  # the client reads it too
    seen: dict[str, str] = {}
    creators = []
    for name, service in services.items():
        argv = [str(a) for a in service["command"]]
        assert argv[0] == "server"
        node_uuid = argv[argv.index("--uuid") + 1]
        port = argv[argv.index("--port") + 1]
        assert peers[node_uuid] == f"{service['hostname']}:{port}", name
        assert argv[argv.index("--peers-file") + 1] == "/etc/nuraft/peers.toml"
        assert "./config:/etc/nuraft:ro" in service["volumes"]
        data = [v for v in service["volumes"] if v.endswith(":/data")]
        assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"]
        seen[node_uuid] = data[0]
        if "--create-group" in argv:
            creators.append(name)
    assert set(seen) == set(peers)
    assert len(set(seen.values())) == 3, "each node has its own data volume"
    assert len(creators) == 1, "one node bootstraps the group"


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


async def _help_options(command: str) -> set[str]:
    done = await run(PYTHON, "-m", "nuraft_mesg", command, "--help")
    assert done.returncode == 0, done.stderr.decode()
    return _options(done.stdout.decode())


async def test_every_option_the_examples_pass_exists() -> None:
    server, status = await _help_options("server"), await _help_options("status")
    m = _k8s()
    compose = _load(DEPLOY / "compose.yaml")[0]
    server_argvs = [_start_script(m["StatefulSet"])]
    server_argvs += [" ".join(map(str, s["command"])) for s in compose["services"].values()]
    for text in server_argvs:
        assert _options(text) <= server, sorted(_options(text) - server)
    # The probes pass their options to `nuraft-mesg status` (all but --max-lag).
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    (healthcheck,) = re.findall(r"^\s+CMD (nuraft-ready .*)$", dockerfile, re.M)
    probe = " ".join(_container(m["StatefulSet"])["readinessProbe"]["exec"]["command"])
    for text in (healthcheck, probe):
        assert "nuraft-ready --server" in text
        assert _options(text) - {"--max-lag"} <= status


def test_dockerfile_shape() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms and all(f.startswith("FROM python:3.12-slim") for f in froms)
    # Every file copied from the build context (the repository root) exists.
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            sources = [s for s in shlex.split(line)[1:-1] if not s.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    assert 'VOLUME ["/data"]' in lines and "EXPOSE 7000" in lines
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert 'ENTRYPOINT ["nuraft-mesg"]' in lines


def _ready_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nuraft_ready", DEPLOY / "ready.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ready_reasons() -> None:
    not_ready = _ready_module().not_ready
    group = {"group_id": "g", "leader_id": "L", "commit_index": 500, "applied_index": 450}
    assert not_ready({"groups": []}, 100) == []
    assert not_ready({"groups": [group]}, 100) == []
    assert not_ready({"groups": [group]}, 10) == ["group g: applied 450 of 500 committed entries"]
    assert not_ready({"groups": [{**group, "leader_id": ""}]}, 100) == ["group g: no leader known"]


async def test_ready_probe_on_a_real_node(tmp_path: Path) -> None:
    """``nuraft-ready`` passes once a node serves and leads its group, fails on a port where
    nothing answers."""
    node_uuid, gid = str(uuid.uuid4()), str(uuid.uuid4())
    port, dead = free_ports(2)
    ready = [PYTHON, str(DEPLOY / "ready.py"), "--timeout", "2"]
    with trio.fail_after(45):
        async with children() as kids:
            node = await kids.spawn(
                "server", PYTHON, "-m", "nuraft_mesg", "-v", "server", "--uuid", node_uuid,
                "--port", str(port), "--data-dir", str(tmp_path / "data"),
                "--create-group", gid)
            await node.wait_line("serving on")  # logged after --create-group is done
            done = await run(*ready, "--server", f"127.0.0.1:{port}")
            assert done.returncode == 0, done.stderr.decode()
            done = await run(*ready, "--server", f"127.0.0.1:{dead}")
            assert done.returncode == 1
            assert "not ready:" in done.stderr.decode()
            assert await node.stop() == 0, node.output
