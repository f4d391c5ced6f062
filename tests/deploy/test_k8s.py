"""deploy/k8s: every manifest parses, and the structure keeps the promises deploy/README.md makes.

No cluster is needed: the checks read the YAML and compare it with the ``veil`` command's own option tables, so a
renamed option or a moved mount fails here rather than in a rollout.
"""

from __future__ import annotations

import importlib
import re
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from veil_cli import SUBCOMMANDS, Option

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
CONFIDENTIAL_RUNTIMES = {"kata-qemu-snp", "kata-qemu-tdx", "kata-qemu-nvidia-gpu-snp", "kata-qemu-nvidia-gpu-tdx"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


DOCS = documents()


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for _, d in DOCS if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, str(k), v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def options_of(command: str) -> dict[str, Option]:
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return {o.name: o for o in module.OPTIONS}


def parse_args(command: str, args: list[str]) -> dict[str, list[str]]:
    """``["--a=1", "--b", "2", "--flag"]`` -> {"a": ["1"], ...}, checked against the subcommand's options."""
    known = options_of(command)
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"veil {command}: unexpected argument {arg!r}"
        name, eq, value = arg[2:].partition("=")
        assert name in known, f"veil {command} has no option --{name}"
        opt = known[name]
        if opt.flag:
            assert not eq, f"--{name} is a flag and takes no value"
            value = "true"
        elif not eq:
            i += 1
            value = args[i]
        if opt.choices:
            assert value in opt.choices, f"--{name}={value} is not one of {opt.choices}"
        if opt.type is not str and not opt.flag:
            opt.type(value)  # int / float options must parse
        assert opt.repeat or name not in out, f"--{name} given twice"
        out.setdefault(name, []).append(value)
        i += 1
    return out


def veil_container(workload: dict[str, Any], command: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    c = containers[0]
    assert c["command"] == ["veil"], "every container runs the one veil command"
    assert c["args"][0] == command
    return c, parse_args(command, c["args"][1:])


def mount_for(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount that holds ``path`` (the longest mountPath prefix)."""
    best: dict[str, Any] | None = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    assert best is not None, f"{path} is on no mounted volume"
    return best


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    vols: list[dict[str, Any]] = [v for v in pod_spec(workload).get("volumes", []) if v["name"] == name]
    assert len(vols) == 1, f"volume {name} missing"
    return vols[0]


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


# ------------------------------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_is_listed() -> None:
    assert DOCS, "no manifests found"
    for fname, doc in DOCS:
        assert {"apiVersion", "kind"} <= doc.keys(), fname
        if doc["kind"] != "Kustomization":
            assert doc["metadata"].get("name"), fname
    kustomization = next(d for f, d in DOCS if d["kind"] == "Kustomization")
    listed = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == listed


def test_kinds() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS if d["kind"] != "Kustomization"}
    for want in [("Deployment", "veil-relay"), ("Service", "veil-relay"), ("HorizontalPodAutoscaler", "veil-relay"),
                 ("StatefulSet", "veil-gateway"), ("Service", "veil-gateway"), ("Deployment", "veil-broker"),
                 ("Service", "veil-broker")]:
        assert want in kinds, f"missing {want}"
    hpa = find("HorizontalPodAutoscaler", "veil-relay")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "veil-relay"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_no_host_access_anywhere() -> None:
    for fname, doc in DOCS:
        for path, key, value in walk(doc):
            assert key != "hostPath", f"{fname}: hostPath at {path}"
            assert not (key in ("hostNetwork", "hostPID", "hostIPC", "privileged") and value is True), \
                f"{fname}: {key} at {path}"


def test_workloads_are_locked_down_and_sized() -> None:
    for fname, doc in DOCS:
        if doc["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(doc)
        assert spec.get("automountServiceAccountToken") is False, fname
        assert spec["securityContext"]["runAsNonRoot"] is True, fname
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), fname
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][part].keys(), f"{c['name']}: resources.{part}"
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{image}: pin a tag"


def test_probes_point_at_healthz_on_the_listen_port() -> None:
    for command, kind, name in (("relay", "Deployment", "veil-relay"), ("gateway", "StatefulSet", "veil-gateway"),
                                ("broker", "Deployment", "veil-broker")):
        c, args = veil_container(find(kind, name), command)
        listen_port = int(args["listen"][0].rpartition(":")[2])
        assert args["listen"][0].startswith("0.0.0.0:"), "listen on the pod's address, not loopback"
        assert [p["containerPort"] for p in c["ports"]] == [listen_port]
        probes = [c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
        assert {"readinessProbe", "livenessProbe"} <= c.keys(), name
        for probe in probes:
            assert probe["httpGet"]["path"] == "/healthz", name
            assert port_number(c, probe["httpGet"]["port"]) == listen_port, name
        if command == "broker":
            assert all(p["httpGet"].get("scheme") == "HTTPS" for p in probes), "the broker only speaks HTTPS"


def test_services_select_their_pods() -> None:
    for kind, name in (("Deployment", "veil-relay"), ("StatefulSet", "veil-gateway"), ("Deployment", "veil-broker")):
        workload = find(kind, name)
        svc = find("Service", name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert svc["metadata"]["namespace"] == workload["metadata"]["namespace"]
        assert svc["spec"]["selector"].items() <= labels.items()
        c = pod_spec(workload)["containers"][0]
        for p in svc["spec"]["ports"]:
            assert port_number(c, p["targetPort"]) == c["ports"][0]["containerPort"]


def test_gateway_runs_in_a_confidential_vm_with_a_gpu_and_keeps_plaintext_in_memory() -> None:
    sts = find("StatefulSet", "veil-gateway")
    spec = pod_spec(sts)
    assert spec["runtimeClassName"] in CONFIDENTIAL_RUNTIMES and "gpu" in spec["runtimeClassName"]
    c, args = veil_container(sts, "gateway")
    res = c["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] >= 1
    assert args["engine"] == ["vllm"]
    # The decrypted model: a memory-backed emptyDir mounted exactly where --model-tmpfs points.
    tmpfs = args["model-tmpfs"][0]
    m = mount_for(c, tmpfs)
    assert m["mountPath"] == tmpfs and not m.get("readOnly")
    vol = volume(sts, m["name"])
    assert vol.get("emptyDir", {}).get("medium") == "Memory" and "sizeLimit" in vol["emptyDir"], m["name"]
    assert "insecure-allow-disk-model" not in args
    # The encrypted model is read-only input; its key comes from the broker (after both sides attest), where its
    # owner imported it: no key file, no Secret volume.
    assert mount_for(c, args["encrypted-model"][0]).get("readOnly") is True
    assert "model-key-file" not in args
    assert not [v for v in pod_spec(sts)["volumes"] if "secret" in v or "projected" in v]
    # Every writable path is in memory too (the root filesystem is read-only).
    for mount in c["volumeMounts"]:
        v = volume(sts, mount["name"])
        if not mount.get("readOnly"):
            assert v.get("emptyDir", {}).get("medium") == "Memory", f"{mount['mountPath']} is writable but not tmpfs"
    assert args["attestation"] != ["simulated"], "a deployment must not publish simulated evidence"
    # The shared OHTTP key set comes from the broker, over HTTPS, under a policy for the broker's own evidence.
    assert "key-file" not in args and "insecure-allow-simulated-broker" not in args
    broker = find("Deployment", "veil-broker")
    _, broker_args = veil_container(broker, "broker")
    url = urlsplit(args["key-broker"][0])
    assert url.scheme == "https"
    assert url.hostname == f"{broker['metadata']['name']}.{broker['metadata']['namespace']}.svc.cluster.local"
    assert url.port == int(broker_args["listen"][0].rpartition(":")[2])
    table = tomllib.loads(find("ConfigMap", "veil-broker-config")["data"]["resources.toml"])["resources"]
    keyset = table.get(args["key-broker-resource"][0])
    assert keyset is not None, "the broker must hold the key set the gateway asks for"
    assert keyset.get("generate") == "ohttp-keyset" and "import" not in keyset, "the key set is made in the broker"
    # The model key the gateway asks for (<--model-key-repo>/model-key/<key id>) is one the broker takes imports of.
    model_keys = {p.split("/", 2)[2]: r for p, r in table.items()
                  if p.startswith(args["model-key-repo"][0] + "/model-key/")}
    assert model_keys and all(r.get("import") == "model-key" for r in model_keys.values())
    assert "llama-3.1-8b-instruct" in model_keys, "the key id deploy/README.md encrypts the model with"
    policy = mount_for(c, args["key-broker-policy"][0])
    assert policy.get("readOnly") is True and "configMap" in volume(sts, policy["name"])


def test_broker_runs_in_a_confidential_vm_and_keeps_its_state_in_memory() -> None:
    dep = find("Deployment", "veil-broker")
    assert pod_spec(dep)["runtimeClassName"] in CONFIDENTIAL_RUNTIMES
    c, args = veil_container(dep, "broker")
    assert args["attestation"] != ["simulated"]
    # What a broker with real attestation refuses to start with: operator key material and insecure switches.
    assert not {"kek-file", "tls-cert", "tls-key", "seal"} & args.keys()
    assert not [a for a in args if a.startswith("insecure-")]
    assert not [e for e in c.get("env", []) if e["name"].startswith("VEIL_BROKER_")], "no options from env"
    # Configuration is read-only and holds no secret; the sealed state is written to a memory-backed emptyDir.
    cfg = mount_for(c, args["resources"][0])
    assert cfg.get("readOnly") is True and set(volume(dep, cfg["name"])) == {"name", "configMap"}
    state = mount_for(c, args["state-dir"][0])
    assert state["mountPath"] == args["state-dir"][0] and not state.get("readOnly")
    vol = volume(dep, state["name"])
    assert vol.get("emptyDir", {}).get("medium") == "Memory" and "sizeLimit" in vol["emptyDir"]
    for mount in c["volumeMounts"]:
        v = volume(dep, mount["name"])
        assert "secret" not in v and "projected" not in v, "no secret reaches the broker from the cluster"
        if not mount.get("readOnly"):
            assert v.get("emptyDir", {}).get("medium") == "Memory", f"{mount['mountPath']} is writable but not tmpfs"
    cm = find("ConfigMap", "veil-broker-config")
    assert Path(args["resources"][0]).name in cm["data"]
    table = tomllib.loads(cm["data"]["resources.toml"])["resources"]
    for path, res in table.items():
        assert res["policy"] in cm["data"], f"{path}: its policy file is not in the ConfigMap"
        assert not Path(res["path"]).is_absolute() and ".." not in Path(res["path"]).parts, \
            f"{path}: its sealed file belongs in --state-dir"
        # Every secret is made inside the broker or imported into it through attestation: nothing else can be
        # sealed under a key only the broker's TEE has.
        assert ("generate" in res) != ("import" in res), f"{path}: generate or import, exactly one"
        if "ohttp" in path.split("/") or res.get("generate") == "ohttp-keyset":
            assert res.get("generate") == "ohttp-keyset" and "import" not in res, f"{path}: key sets are generated"
        if "import" in res:
            assert res["import"] == "model-key" and re.fullmatch(r"[0-9a-f]{64}", res["import-token-sha256"])
    # The broker's own loader accepts the table (paths, policies, generate/import rules) with these options.
    from enclave.broker.config import load_resources

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in cm["data"].items():
            Path(tmp, name).write_text(text)
        state_dir = Path(tmp, "state")
        state_dir.mkdir()
        loaded = load_resources(Path(tmp, "resources.toml"), bytes(32), state_dir=state_dir)
        assert set(loaded) == set(table)
        assert all(r.sealed_file.parent == state_dir for r in loaded.values())


def test_relay_lists_every_gateway_replica() -> None:
    sts = find("StatefulSet", "veil-gateway")
    svc = find("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "per-replica DNS names need a headless Service"
    _, gw_args = veil_container(sts, "gateway")
    gw_port = int(gw_args["listen"][0].rpartition(":")[2])
    relay = find("Deployment", "veil-relay")
    assert "runtimeClassName" not in pod_spec(relay), "the relay runs outside the TEE"
    _, args = veil_container(relay, "relay")
    (spec,) = args["gateway"]
    name, _, urls = spec.partition("=")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)
    ns, sts_name, service = sts["metadata"]["namespace"], sts["metadata"]["name"], svc["metadata"]["name"]
    want = [f"{sts_name}-{i}.{service}.{ns}.svc.cluster.local" for i in range(sts["spec"]["replicas"])]
    parsed = [urlsplit(u) for u in urls.split(",")]
    assert [p.hostname for p in parsed] == want
    assert all(p.port == gw_port and p.path == "/.well-known/ohttp-gateway" for p in parsed)
    assert float(args["health-interval"][0]) > 0


def test_gateway_network_policy_admits_only_relays() -> None:
    pol = find("NetworkPolicy", "veil-gateway")
    relay = find("Deployment", "veil-relay")
    (rule,) = pol["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": relay["metadata"]["namespace"]}
    assert peer["podSelector"]["matchLabels"].items() <= relay["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("fname", sorted(p.name for p in K8S.glob("*.yaml")))
def test_namespaced_objects_use_the_declared_namespaces(fname: str) -> None:
    declared = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "Namespace"}
    for f, doc in DOCS:
        if f == fname and doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"].get("namespace") in declared, f"{fname}: {doc['kind']} {doc['metadata']['name']}"
