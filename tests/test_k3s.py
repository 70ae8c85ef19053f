"""The K3s deployment (k3s/, Containerfile, .dockerignore), checked offline. The base and every
overlay render with `kubectl kustomize`, the overlays from a site directory written the way an
operator writes it (the example configuration and credentials, an identity from
`iomt-aggregator keygen`, a registry from `iomt-aggregator enroll`); every rendered object
validates with `kubernetes-validate --strict` against the Kubernetes minor of the K3s release
in docs/k3s.md. Then the rendered objects are checked for what the schemas cannot see: pod
security, the single coordinator, the workers' autoscaler, disruption budgets, the network
policies, the configuration the aggregator really parses and the paths it names, and the
image's non-root user."""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from aggregator.cli import main as aggregator_main
from aggregator.config import AggregatorConfig, load_config
from pqlink import Identity, KeyFileError, Role, load_identity, load_registry
from pqlink.identity import save_public_identity
from wire.model import DEFAULT_INITIAL_WEIGHTS

from .harness import tool

ROOT = Path(__file__).resolve().parents[1]
K3S = ROOT / "k3s"
EXAMPLES = K3S / "examples"
OVERLAYS = ("raspberry-pi", "dev")
TARGETS = ("base", *OVERLAYS)
KUBERNETES_VERSION = "1.32.0"  # K3s v1.32 (docs/k3s.md)
NAMESPACE = "iomt"
BASE_GATEWAY_CIDR = "192.0.2.0/24"  # the base's placeholder (TEST-NET-1)
GATEWAY_ID = "gw-01"
AMQP_PORT = 5672
AGGREGATOR_COMPONENTS = {"iomt-coordinator", "iomt-worker"}
SVCLB_LABEL = "svccontroller.k3s.cattle.io/svcname"
ARCH_LABEL = "kubernetes.io/arch"

Obj = dict[str, Any]


def _kubectl() -> str:
    return tool(
        "kubectl",
        "install kubectl >= 1.27 (built-in kustomize 5) from the Kubernetes release binaries "
        "or pkgs.k8s.io (not Debian's kubernetes-client)",
    )


def _validator() -> str:
    return tool(
        "kubernetes-validate",
        "install the Python package 'kubernetes-validate' (the test extras)",
    )


# --- rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    target: str
    text: str
    objects: list[Obj]

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        """By name; a generated ConfigMap or Secret also by its name before the hash suffix."""
        found = [
            o
            for o in self.all(kind)
            if o["metadata"]["name"] == name
            or (
                kind in {"ConfigMap", "Secret"}
                and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", o["metadata"]["name"])
            )
        ]
        assert len(found) == 1, f"{self.target}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in {"Deployment", "StatefulSet"}]


def _write_site(site: Path, public_dir: Path) -> None:
    """What an operator writes into an overlay's site/ directory (docs/k3s.md)."""
    site.mkdir(mode=0o700)
    shutil.copy(EXAMPLES / "aggregator.toml.example", site / "aggregator.toml")
    shutil.copy(EXAMPLES / "rabbitmq.env.example", site / "rabbitmq.env")
    shutil.copy(EXAMPLES / "operator.toml.example", site / "operator.toml")
    (site / "erlang.cookie").write_text(secrets.token_hex(32))
    operator = str(site / "operator.toml")
    assert aggregator_main(["keygen", "--config", operator]) == 0
    assert aggregator_main(["enroll", "--config", operator, str(public_dir / "gw-01.pub")]) == 0


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    kubectl = _kubectl()
    work = tmp_path_factory.mktemp("k3s")
    tree = work / "k3s"
    # Never the operator's own site files: a copy of the tree without them.
    shutil.copytree(K3S, tree, ignore=shutil.ignore_patterns("site"))
    public_dir = work / "public"
    public_dir.mkdir()
    gateway = Identity.generate(GATEWAY_ID, Role.GATEWAY)
    save_public_identity(gateway.public, public_dir / "gw-01.pub")
    out = {}
    for target in TARGETS:
        path = tree / "base" if target == "base" else tree / "overlays" / target
        if target != "base":
            _write_site(path / "site", public_dir)
        proc = subprocess.run(
            [kubectl, "kustomize", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
        objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
        assert objects, f"{target} rendered nothing"
        out[target] = Rendered(target, proc.stdout, objects)
    return out


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


def test_every_overlay_is_tested() -> None:
    assert sorted(p.name for p in (K3S / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


def test_renders_validate_against_the_kubernetes_schemas(rendered: Rendered) -> None:
    """--strict rejects unknown fields; a kind without a schema (a typo'd apiVersion, a CRD) is
    only a warning for the tool, so a warning fails here, and every object must pass."""
    proc = subprocess.run(
        [_validator(), "--strict", "-k", KUBERNETES_VERSION, "-"],
        input=rendered.text,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    problems = [ln for ln in lines if not ln.startswith("INFO ")]
    assert not problems, "\n".join(problems)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = [ln for ln in lines if " passed for resource " in ln]
    assert len(passed) == len(rendered.objects), proc.stdout


def test_namespace_and_references(rendered: Rendered) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    assert ("Namespace", NAMESPACE) in names
    ns = rendered.get("Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in rendered.objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]["name"]
        annotations = o["metadata"].get("annotations", {})
        assert "config.kubernetes.io/local-config" not in annotations, o["metadata"]["name"]
    if rendered.target == "base":
        return  # the overlays add the site's Secrets and ConfigMaps
    for w in rendered.workloads():
        spec = w["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for vol in spec["volumes"]:
            if "secret" in vol:
                assert ("Secret", vol["secret"]["secretName"]) in names, vol
            if "configMap" in vol:
                assert ("ConfigMap", vol["configMap"]["name"]) in names, vol
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, vol
        for c in _containers(spec):
            for src in c.get("envFrom", []):
                assert ("Secret", src["secretRef"]["name"]) in names, src
            for m in c.get("volumeMounts", []):
                known = {v["name"] for v in spec["volumes"]} | claims
                assert m["name"] in known, (w["metadata"]["name"], m)


# --- pod security and resources --------------------------------------------------------------


def _containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str) -> int:
    for suffix, factor in _BINARY.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def test_every_container_is_locked_down(rendered: Rendered) -> None:
    assert {w["metadata"]["name"] for w in rendered.workloads()} == {
        "iomt-coordinator",
        "iomt-worker",
        "rabbitmq",
    }
    for w in rendered.workloads():
        spec = w["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        where = w["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("enableServiceLinks") is False, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (where, key)
        for c in _containers(spec):
            sc = c.get("securityContext", {})
            ctx = f"{where}/{c['name']}"

            def effective(key: str, sc: Obj = sc, pod: Obj = pod) -> Any:
                return sc.get(key, pod.get(key))

            assert effective("runAsNonRoot") is True, ctx
            assert isinstance(effective("runAsUser"), int), ctx
            assert effective("runAsUser") > 0, ctx
            assert effective("runAsGroup") > 0, ctx
            assert effective("seccompProfile") == {"type": "RuntimeDefault"}, ctx
            assert sc.get("allowPrivilegeEscalation") is False, ctx
            assert sc.get("readOnlyRootFilesystem") is True, ctx
            assert not sc.get("privileged"), ctx
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], ctx
            assert not sc.get("capabilities", {}).get("add"), ctx
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert set(resources.get(kind, {})) >= {"cpu", "memory"}, (ctx, kind)
            assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])
            assert _millicores(resources["requests"]["cpu"]) <= _millicores(
                resources["limits"]["cpu"]
            )
            image = c["image"]
            assert re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), (ctx, image)
            assert not image.endswith(":latest"), (ctx, image)
        for c in spec["containers"]:
            # A read-only root: /tmp must be a writable emptyDir.
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1, where
            assert not tmp[0].get("readOnly")
            vol = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
            assert "emptyDir" in vol, where


def test_aggregator_image_and_user_match_the_project(rendered: Rendered) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    final_user = _final_stage_user()
    for name in AGGREGATOR_COMPONENTS:
        spec = rendered.get("Deployment", name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == final_user
        for c in _containers(spec):
            assert c["image"] == f"ghcr.io/iomt-gateway/aggregator:{project['version']}"
    broker = rendered.get("StatefulSet", "rabbitmq")["spec"]["template"]["spec"]
    assert broker["containers"][0]["image"].startswith("rabbitmq:3.13")


# --- coordinator, workers, broker ------------------------------------------------------------


def test_exactly_one_coordinator(rendered: Rendered) -> None:
    coordinator = rendered.get("Deployment", "iomt-coordinator")
    assert coordinator["spec"]["replicas"] == 1
    assert coordinator["spec"]["strategy"] == {"type": "Recreate"}
    spec = coordinator["spec"]["template"]["spec"]
    state = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert len(state) == 1
    pvc = rendered.get("PersistentVolumeClaim", state[0]["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    for hpa in rendered.all("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] != "iomt-coordinator"


def test_worker_autoscaler(rendered: Rendered) -> None:
    (hpa,) = rendered.all("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "iomt-worker",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    worker = rendered.get("Deployment", "iomt-worker")
    assert "replicas" not in worker["spec"], "the autoscaler owns the replica count"
    for c in worker["spec"]["template"]["spec"]["containers"]:
        assert _millicores(c["resources"]["requests"]["cpu"]) > 0


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector; {} selects everything."""
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _pod_labels(rendered: Rendered, name: str) -> dict[str, str]:
    workload = next(w for w in rendered.workloads() if w["metadata"]["name"] == name)
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_disruption_budgets(rendered: Rendered) -> None:
    budgets = rendered.all("PodDisruptionBudget")
    worker = [
        p for p in budgets if _selects(p["spec"]["selector"], _pod_labels(rendered, "iomt-worker"))
    ]
    broker = [
        p for p in budgets if _selects(p["spec"]["selector"], _pod_labels(rendered, "rabbitmq"))
    ]
    assert len(worker) == 1
    assert worker[0]["spec"]["minAvailable"] == 1
    assert len(broker) == 1
    # three nodes with quorum queues: a drain takes one at a time, keeping the majority
    assert (
        broker[0]["spec"].get("minAvailable") == 2 or broker[0]["spec"].get("maxUnavailable") == 1
    )
    for p in budgets:
        assert not _selects(p["spec"]["selector"], _pod_labels(rendered, "iomt-coordinator"))


def test_probes_use_the_metrics_endpoint(rendered: Rendered) -> None:
    for name in AGGREGATOR_COMPONENTS:
        (c,) = rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"metrics": 9102}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (name, probe)
    (broker,) = rendered.get("StatefulSet", "rabbitmq")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert broker[probe]["exec"]["command"][0] == "rabbitmq-diagnostics", probe
        assert broker[probe]["timeoutSeconds"] >= 10, probe


def test_broker_storage_and_memory(rendered: Rendered) -> None:
    broker = rendered.get("StatefulSet", "rabbitmq")
    assert broker["spec"]["replicas"] == 3
    assert broker["spec"]["podManagementPolicy"] == "Parallel"  # peers form the cluster together
    assert broker["spec"]["serviceName"] == "rabbitmq-headless"
    assert rendered.get("Service", "rabbitmq-headless")["spec"]["clusterIP"] == "None"
    (claim,) = broker["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "local-path"
    (c,) = broker["spec"]["template"]["spec"]["containers"]
    data = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert data["mountPath"] == "/var/lib/rabbitmq"
    assert c["envFrom"][0]["secretRef"]["name"].startswith("rabbitmq-credentials")
    # RabbitMQ plans its memory with the limit the configuration states: the container's.
    conf = rendered.get("ConfigMap", "rabbitmq-config")["data"]
    override = re.search(
        r"^total_memory_available_override_value = (\d+)$", "".join(conf.values()), re.M
    )
    assert override is not None
    assert int(override[1]) == _bytes(c["resources"]["limits"]["memory"])


# --- network ---------------------------------------------------------------------------------


def _gateway_cidr(target: str) -> str:
    if target == "base":
        return BASE_GATEWAY_CIDR
    doc = yaml.safe_load((K3S / "overlays" / target / "gateway-network.yaml").read_text())
    cidr: str = doc["data"]["cidr"]
    return cidr


def _port_allowed(rule: Obj, port: int, port_name: str, protocol: str = "TCP") -> bool:
    """Whether a policy rule covers the port (by number, name or range); no ports: all."""
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        number = p.get("port")
        if number is None or number in {port, port_name}:
            return True
        if isinstance(number, int) and number <= port <= p.get("endPort", number):
            return True
    return False


def _rules(
    rendered: Rendered, direction: str, labels: dict[str, str], port: int, port_name: str = ""
) -> list[Obj]:
    """The peers allowed to reach (ingress) or be reached by (egress) pods with these labels."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    peers = []
    for policy in rendered.all("NetworkPolicy"):
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get(key, []):
            assert rule.get(peers_key), f"{policy['metadata']['name']}: a rule for every peer"
            if _port_allowed(rule, port, port_name):
                peers += rule[peers_key]
    return peers


def test_default_deny(rendered: Rendered) -> None:
    deny = [
        p
        for p in rendered.all("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_amqp_reaches_the_broker_only_from_the_aggregator_and_the_gateways(
    rendered: Rendered,
) -> None:
    broker = _pod_labels(rendered, "rabbitmq")
    lb = rendered.get("Service", "rabbitmq-gateways")
    cidrs, svclb, pods = set(), [], set()
    for peer in _rules(rendered, "Ingress", broker, AMQP_PORT, "amqp"):
        assert set(peer) <= {"ipBlock", "podSelector", "namespaceSelector"}, peer
        if "ipBlock" in peer:
            assert not peer["ipBlock"].get("except"), peer
            cidrs.add(peer["ipBlock"]["cidr"])
        elif "namespaceSelector" in peer:
            # K3s's ServiceLB: its svclb pods in kube-system forward (and masquerade) the
            # gateways' connections that loadBalancerSourceRanges admit.
            assert peer["namespaceSelector"] == {
                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
            }, peer
            assert peer["podSelector"] == {"matchLabels": {SVCLB_LABEL: lb["metadata"]["name"]}}
            svclb.append(peer)
        else:
            matched = {
                w["metadata"]["name"]
                for w in rendered.workloads()
                if _selects(peer["podSelector"], _pod_labels(rendered, w["metadata"]["name"]))
            }
            assert matched <= AGGREGATOR_COMPONENTS, (peer, matched)
            assert not _selects(peer["podSelector"], {"app.kubernetes.io/name": "intruder"})
            pods |= matched
    cidr = _gateway_cidr(rendered.target)
    assert cidrs == {cidr}
    assert pods == AGGREGATOR_COMPONENTS
    assert len(svclb) == 1
    # The Service the gateways use: AMQP only, from the gateways' network only.
    assert lb["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in lb["spec"]["ports"]] == [AMQP_PORT]
    assert lb["spec"]["loadBalancerSourceRanges"] == [cidr]
    assert _selects(lb["spec"]["selector"], broker)
    exposed = [
        s for s in rendered.all("Service") if s["spec"].get("type") in {"LoadBalancer", "NodePort"}
    ]
    assert exposed == [lb]


def test_metrics_reach_the_pods_only_from_monitoring(rendered: Rendered) -> None:
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    for name, port in (("iomt-coordinator", 9102), ("iomt-worker", 9102), ("rabbitmq", 15692)):
        peers = _rules(rendered, "Ingress", _pod_labels(rendered, name), port)
        assert peers == [{"namespaceSelector": monitoring}], name
    # Nothing reaches the management UI (kubectl port-forward does not need a policy).
    assert not _rules(rendered, "Ingress", _pod_labels(rendered, "rabbitmq"), 15672, "management")


def _all_rules(rendered: Rendered, direction: str, labels: dict[str, str]) -> list[Obj]:
    key = direction.lower()
    return [
        rule
        for policy in rendered.all("NetworkPolicy")
        if direction in policy["spec"]["policyTypes"]
        and _selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get(key, [])
    ]


def test_egress_only_to_dns_and_the_broker(rendered: Rendered) -> None:
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    broker = {"podSelector": {"matchLabels": _pod_labels(rendered, "rabbitmq")}}
    for w in rendered.workloads():
        name = w["metadata"]["name"]
        allowed = set()
        for rule in _all_rules(rendered, "Egress", _pod_labels(rendered, name)):
            ports = {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}
            if rule["to"] == [dns]:
                assert ports == {(53, "UDP"), (53, "TCP")}, name
                allowed.add("dns")
            elif rule["to"] == [broker] and name == "rabbitmq":
                assert ports == {(4369, "TCP"), (25672, "TCP")}, name  # its peers only
                allowed.add("cluster")
            elif rule["to"] == [broker]:
                assert ports == {(AMQP_PORT, "TCP")}, name
                allowed.add("amqp")
            else:
                pytest.fail(f"{name} may reach {rule}")
        expected = {"dns", "amqp"} if name in AGGREGATOR_COMPONENTS else {"dns"}
        if name == "rabbitmq":
            expected = {"dns", "cluster"}
        assert allowed == expected, name


# --- the overlays ----------------------------------------------------------------------------


def test_raspberry_pi_overlay(renders: dict[str, Rendered]) -> None:
    pi, base = renders["raspberry-pi"], renders["base"]
    for w in pi.workloads():
        name = w["metadata"]["name"]
        spec = w["spec"]["template"]["spec"]
        assert spec.get("nodeSelector") == {ARCH_LABEL: "arm64"}, name
        base_spec = next(b for b in base.workloads() if b["metadata"]["name"] == name)
        base_containers = {c["name"]: c for c in _containers(base_spec["spec"]["template"]["spec"])}
        for c in _containers(spec):
            limit = _bytes(c["resources"]["limits"]["memory"])
            assert limit <= _bytes(base_containers[c["name"]]["resources"]["limits"]["memory"])
            assert limit <= 512 * 2**20, (name, c["name"])
    for w in renders["dev"].workloads():
        assert ARCH_LABEL not in w["spec"]["template"]["spec"].get("nodeSelector", {})


def _secret_file(rendered: Rendered, name: str, key: str) -> bytes:
    return base64.b64decode(rendered.get("Secret", name)["data"][key])


def _mount(container: Obj, path: str) -> Obj:
    """The volume mount holding `path` (the longest matching mount path)."""
    mounts = [
        m
        for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, (container["name"], path)
    return max(mounts, key=lambda m: len(m["mountPath"]))


def _volume(pod_spec: Obj, name: str) -> Obj:
    volume: Obj = next(v for v in pod_spec["volumes"] if v["name"] == name)
    return volume


def _config(overlay: Rendered, tmp_path: Path) -> tuple[AggregatorConfig, str]:
    """The rendered configuration Secret parsed by the aggregator's own loader, at the path the
    pods read it from (relative paths would resolve against that directory)."""
    text = _secret_file(overlay, "iomt-aggregator-config", "aggregator.toml").decode()
    mount_dir = tmp_path / "etc/iomt-aggregator/config"
    mount_dir.mkdir(parents=True)
    (mount_dir / "aggregator.toml").write_text(text)
    return load_config(mount_dir / "aggregator.toml"), text


def test_aggregator_configuration_names_the_mounted_paths(
    overlay: Rendered, tmp_path: Path
) -> None:
    config, text = _config(overlay, tmp_path)
    assert "CHANGE-ME" in text  # the example: rendered here, never deployed as is
    for name in AGGREGATOR_COMPONENTS:
        spec = overlay.get("Deployment", name)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        # --config: the Secret's key in its mounted directory
        path = c["args"][c["args"].index("--config") + 1]
        mount = _mount(c, path)
        vol = _volume(spec, mount["name"])
        assert vol["secret"]["secretName"].startswith("iomt-aggregator-config-")
        assert path == mount["mountPath"] + "/aggregator.toml"
        assert mount["readOnly"] is True
        # the identity: the initContainer's 0600 copy on a memory-backed volume
        (init,) = spec["initContainers"]
        assert init["command"][:3] == ["install", "-m", "0600"]
        source, dest = init["command"][3:]
        assert dest == str(config.identity)
        id_mount = _mount(c, dest)
        assert _volume(spec, id_mount["name"])["emptyDir"]["medium"] == "Memory"
        assert _mount(init, dest)["name"] == id_mount["name"]
        src_mount = _mount(init, source)
        src_volume = _volume(spec, src_mount["name"])
        assert src_volume["secret"]["secretName"].startswith("iomt-aggregator-identity-")
        assert source == src_mount["mountPath"] + "/identity.key"
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
        assert src_volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
        # the registry: the generated ConfigMap
        reg_mount = _mount(c, str(config.registry))
        reg_volume = _volume(spec, reg_mount["name"])
        assert reg_volume["configMap"]["name"].startswith("iomt-gateway-registry-")
        assert str(config.registry) == reg_mount["mountPath"] + "/gateways.json"
        # metrics: the probes' port
        assert config.metrics.port == c["ports"][0]["containerPort"]
        assert config.metrics.host == "0.0.0.0"
    coordinator = overlay.get("Deployment", "iomt-coordinator")["spec"]["template"]["spec"]
    state = _mount(coordinator["containers"][0], str(config.state_dir))
    assert state["mountPath"] == str(config.state_dir)
    assert "persistentVolumeClaim" in _volume(coordinator, state["name"])
    assert not state.get("readOnly")
    assert config.initial_weights == DEFAULT_INITIAL_WEIGHTS
    assert config.rounds.max_rounds == 0, "a coordinator that exits is restarted in a loop"
    assert not config.bench.plaintext_envelopes


def test_amqp_url_matches_the_broker(overlay: Rendered, tmp_path: Path) -> None:
    config, _ = _config(overlay, tmp_path)
    url = urlsplit(config.amqp.url)
    assert url.scheme == "amqp"
    assert url.port == AMQP_PORT
    service = overlay.get("Service", url.hostname or "")
    assert AMQP_PORT in [p["port"] for p in service["spec"]["ports"]]
    assert _selects(service["spec"]["selector"], _pod_labels(overlay, "rabbitmq"))
    creds = overlay.get("Secret", "rabbitmq-credentials")["data"]
    assert unquote(url.username or "") == base64.b64decode(creds["RABBITMQ_DEFAULT_USER"]).decode()
    assert unquote(url.password or "") == base64.b64decode(creds["RABBITMQ_DEFAULT_PASS"]).decode()


def test_identity_and_registry_survive_the_trip(overlay: Rendered, tmp_path: Path) -> None:
    """The key from keygen, as a secret volume shows it (0440), is refused by the loader; the
    initContainer's 0600 copy loads. The registry ConfigMap holds the enrolled gateway."""
    config, _ = _config(overlay, tmp_path)
    key = _secret_file(overlay, "iomt-aggregator-identity", "identity.key")
    as_mounted = tmp_path / "identity-secret.key"
    as_mounted.write_bytes(key)
    as_mounted.chmod(0o440)
    with pytest.raises(KeyFileError, match="0440"):
        load_identity(as_mounted)
    copy = tmp_path / "identity.key"
    subprocess.run(["install", "-m", "0600", str(as_mounted), str(copy)], check=True)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    identity = load_identity(copy)
    assert identity.name == config.aggregator_id
    assert identity.role is Role.AGGREGATOR
    registry_text = overlay.get("ConfigMap", "iomt-gateway-registry")["data"]["gateways.json"]
    (tmp_path / "gateways.json").write_text(registry_text)
    registry = load_registry(tmp_path / "gateways.json")
    assert [g.name for g in registry.active(Role.GATEWAY)] == [GATEWAY_ID]


def test_site_files_stay_out_of_git_and_the_image() -> None:
    git = shutil.which("git")
    if git is None:
        pytest.fail("git not found: install the Debian package 'git'")
    for overlay_name in OVERLAYS:
        for name in (
            "aggregator.toml",
            "identity.key",
            "rabbitmq.env",
            "gateways.json",
            "erlang.cookie",
        ):
            path = f"k3s/overlays/{overlay_name}/site/{name}"
            proc = subprocess.run([git, "check-ignore", "-q", path], cwd=ROOT, check=False)
            assert proc.returncode == 0, f"{path} is not ignored by git"
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()


# --- the Containerfile -----------------------------------------------------------------------


def _stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's stages as (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def _final_stage_user() -> int:
    users = [args for ins, args in _stages()[-1] if ins == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric USER lets the kubelet verify runAsNonRoot"
    return int(uid)


def test_containerfile() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: the compiler stays in the builder"
    builder, final = stages[0], stages[-1]
    assert _final_stage_user() > 0
    assert ("ENTRYPOINT", '["iomt-aggregator"]') in final
    final_text = " ".join(args for _, args in final)
    assert "gcc" not in final_text
    assert "gcc" in " ".join(args for _, args in builder)
    # The virtual environment is copied, so both stages use the same Python image.
    assert builder[0][1].split()[0] == final[0][1].split()[0]
    assert "COPY --from=builder /opt/venv /opt/venv" in [f"{i} {a}" for i, a in final]
    # Nothing architecture-specific: buildx builds it for linux/arm64 and linux/amd64.
    assert not re.search(r"amd64|arm64|aarch64|x86_64|--platform", final_text)
    # Everything the package build needs is copied into the builder, and in the build context.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {
        src.rstrip("/")
        for ins, args in builder
        if ins == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    }
    packages = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    needed = {*packages, "pyproject.toml", "setup.py"}
    assert needed | {project["project"]["readme"]} <= copied
    context = (ROOT / ".dockerignore").read_text().splitlines()
    assert {ln[1:].rstrip("/") for ln in context if ln.startswith("!")} >= copied
    # The initial model ships in the wheel: package-data of wire.assets.
    assert "*.npz" in project["tool"]["setuptools"]["package-data"]["wire.assets"]
    assert DEFAULT_INITIAL_WEIGHTS.is_file()


def test_docs_state_the_validated_version() -> None:
    docs = (ROOT / "docs" / "k3s.md").read_text()
    minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    assert f"K3s v{minor}" in docs
    assert f"-k {KUBERNETES_VERSION}" in docs or f"Kubernetes {minor}" in docs
