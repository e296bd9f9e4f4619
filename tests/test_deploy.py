"""The deployment files in deploy/, checked offline.

- Compose: the Compose Specification schema (check-jsonschema's vendored copy) and the
  stack's structure: two node replicas behind the load balancer, shared keys, health checks.
- Kubernetes: every document of deploy/k8s against the bundled 1.29 schemas
  (kubernetes-validate, strict), then probes, resources, security and selectors.
- Prometheus: ``promtool check config``, ``check rules`` and ``test rules`` (Debian's
  ``prometheus`` package, installed once when missing and possible, else skipped).
- Every PromQL expression (alert rules, Grafana dashboard) names only series that
  ``resolver.metrics.Metrics`` registers, with their real labels.
- The Dockerfile (line parser), its entrypoint and health check, the nginx configuration
  (``nginx -t`` on a copy when nginx is there or can be installed).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from resolver.config import SETTINGS, Config
from resolver.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
KUBERNETES_VERSION = "1.29.0"
SETTING_ENVS = frozenset(s.env for s in SETTINGS.values())
NODE_PORT = 8000
INSTALL_TIMEOUT = 180.0

# --- helpers: files -----------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        given = env.get(name)
        if operator in (":-", ":?") and not given:
            given = None
        if given is not None:
            return given
        if operator in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required: {argument}")
        return argument or ""

    return _COMPOSE_VARIABLE.sub(one, value).replace("$$", "$")


@functools.cache
def compose() -> dict[str, Any]:
    document = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(document, dict)
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value)) for key, value in raw.items()}


def idnode_services() -> dict[str, dict[str, Any]]:
    """Compose services running the idnode image."""
    image = compose_services()["idnode-1"]["image"]
    return {name: s for name, s in compose_services().items() if s.get("image") == image}


def node_replicas() -> dict[str, dict[str, Any]]:
    """Compose services running ``idnode serve``."""
    return {name: s for name, s in idnode_services().items() if s.get("command") == ["serve"]}


@functools.cache
def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    return {path.name: load_yaml_all(path) for path in sorted(K8S.glob("*.yaml"))}


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in k8s_documents().values() for doc in docs if doc["kind"] == kind]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects(kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def nginx_upstreams(text: str) -> dict[str, list[str]]:
    return {
        name: re.findall(r"^\s*server\s+([^\s;]+)", body, re.MULTILINE)
        for name, body in re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text)
    }


def dashboard() -> dict[str, Any]:
    document = json.loads((GRAFANA / "dashboards" / "idnode.json").read_text())
    assert isinstance(document, dict)
    return document


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "rules.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- helpers: PromQL against the node's own metrics ---------------------------------------

TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus attaches to every scraped series."""
SCRAPE_SERIES = {"up": frozenset()}
"""Series Prometheus itself writes for every target."""


@functools.cache
def metric_catalog() -> dict[str, frozenset[str]]:
    """Every series name ``Metrics()`` exposes, with its label names (target labels apart)."""
    registry = Metrics().registry
    labels_of: dict[str, tuple[str, ...]] = {}
    for collector in list(registry._collector_to_names):  # the registered collectors
        name = getattr(collector, "_name", None)
        if name is not None:
            labels_of[name] = tuple(getattr(collector, "_labelnames", ()))
    catalog: dict[str, frozenset[str]] = dict(SCRAPE_SERIES)
    for family in registry.collect():
        labels = frozenset(labels_of[family.name])
        if family.type == "counter":
            catalog[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            catalog[f"{family.name}_bucket"] = labels | {"le"}
            catalog[f"{family.name}_sum"] = labels
            catalog[f"{family.name}_count"] = labels
        else:
            catalog[family.name] = labels
    return catalog


_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(
    r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()\s*(\{[^}]*\})?|(?<![\w:])(\{[^}]*\})"
)
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def parse_promql(expr: str) -> tuple[list[tuple[str, frozenset[str]]], frozenset[str]]:
    """The selectors of ``expr`` (metric name, label names matched) and its grouping labels.

    A regex reading, enough for the expressions of this repository: strings, ranges and
    Grafana variables are blanked first; a name followed by ``(`` is a function.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping: set[str] = set()
    for _, labels in _GROUPING.findall(text):
        grouping.update(label.strip() for label in labels.split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    selectors = []
    for match in _SELECTOR.finditer(text):
        name, matchers, bare = match.group(1), match.group(2), match.group(3)
        if name is None:
            selectors.append(("", frozenset(_MATCHER.findall(bare))))
        elif name not in _PROMQL_KEYWORDS:
            selectors.append((name, frozenset(_MATCHER.findall(matchers or ""))))
    return selectors, frozenset(grouping)


def promql_problems(expr: str) -> list[str]:
    """What in ``expr`` does not exist in the node's metrics; empty when all is real."""
    catalog = metric_catalog()
    selectors, grouping = parse_promql(expr)
    if not selectors:
        return [f"no metric found in {expr!r}"]
    problems = []
    known_labels: set[str] = set(TARGET_LABELS)
    for name, labels in selectors:
        if name not in catalog:
            problems.append(f"unknown metric {name!r}")
            continue
        known_labels |= catalog[name]
        unknown = labels - catalog[name] - TARGET_LABELS
        if unknown:
            problems.append(f"{name} has no label(s) {sorted(unknown)}")
    for label in sorted(grouping - known_labels):
        problems.append(f"grouping label {label!r} is on none of the metrics")
    return problems


# --- helpers: external tools --------------------------------------------------------------


def debian_tool(binary: str, package: str) -> str:
    """Path of ``binary``; installs Debian's ``package`` once if missing (root + apt-get)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    found = shutil.which(binary, path=search)
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{binary} is not installed and apt-get install {package} needs root + apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    deadline = time.monotonic() + INSTALL_TIMEOUT
    output = ""
    try:
        for attempt in ("install", "update", "install"):
            command = install if attempt == "install" else ["apt-get", "update", "-q"]
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                stdin=subprocess.DEVNULL,
            )
            output = result.stdout + result.stderr
            if attempt == "install" and result.returncode == 0:
                break
    except subprocess.TimeoutExpired:
        pytest.skip(f"apt-get install {package} took longer than {INSTALL_TIMEOUT:.0f} s")
    found = shutil.which(binary, path=search)
    if not found:
        tail = " | ".join(output.strip().splitlines()[-3:])
        pytest.skip(f"apt-get install {package} did not provide {binary}: {tail}")
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def nginx() -> str:
    return debian_tool("nginx", "nginx")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(
        command, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs
    )


# --- Compose ------------------------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(path)]
    )


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    result = check_compose_schema(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # the vendored schema really judges: a wrong depends_on condition is refused
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        (DEPLOY / "compose.yaml")
        .read_text()
        .replace("condition: service_completed_successfully", "condition: finished", 1)
    )
    refused = check_compose_schema(broken)
    assert refused.returncode != 0, "the compose schema accepted an invalid condition"


def test_compose_stack_has_every_part() -> None:
    services = compose_services()
    assert services["postgres"]["image"].startswith("postgres:16")
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
    idnode = idnode_services()
    for name, service in idnode.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (DEPLOY / service["build"]["context"] / "deploy" / "Dockerfile").is_file()
    assert set(idnode) == {"keys", "migrate", "idnode-1", "idnode-2"}
    assert idnode["migrate"]["command"] == ["migrate"]
    assert idnode["migrate"]["restart"] == "no"
    assert set(node_replicas()) == {"idnode-1", "idnode-2"}
    assert "prometheus" in services["prometheus"]["image"]
    assert services["grafana"]["image"].startswith("grafana/grafana")


def test_compose_node_replicas_share_keys_and_wait_for_the_database() -> None:
    services = compose_services()
    replicas = node_replicas()
    mounts: list[str] = []
    for name, service in replicas.items():
        env = compose_environment(service)
        key_dirs = {
            str(Path(env["IDNODE_NODE_KEY"]).parent),
            str(Path(env["IDNODE_SEALING_KEY"]).parent),
        }
        assert len(key_dirs) == 1, f"{name}: keys in two directories {key_dirs}"
        volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        (key_dir,) = key_dirs
        assert key_dir in volumes, f"{name}: {key_dir} is not on a shared volume"
        assert volumes[key_dir] in compose()["volumes"], f"{name}: {volumes[key_dir]} undeclared"
        mounts.append(f"{volumes[key_dir]}:{key_dir}")
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["keys"]["condition"] == "service_completed_successfully"
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{env['IDNODE_PORT']}/readyz" in check
        assert env["IDNODE_HOST"] == "0.0.0.0"
        assert "@postgres:" in env["DATABASE_URL"]
    assert len(mounts) == 2 and mounts[0] == mounts[1], "the replicas must share the keys volume"
    keys_service = services["keys"]
    assert keys_service["volumes"] == [mounts[0]], "the keys service writes elsewhere"
    assert "NodeKey.load_or_create" in keys_service["command"][0]
    assert "Sealer.load_or_create" in keys_service["command"][0]
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"


def test_compose_load_balancer_fronts_both_replicas() -> None:
    services = compose_services()
    lb = services["lb"]
    assert lb["image"].startswith("nginx")
    mounted = {v.split(":")[0]: v.split(":")[1] for v in lb["volumes"]}
    assert mounted["./nginx/nginx.conf"] == "/etc/nginx/nginx.conf"
    for replica in node_replicas():
        assert lb["depends_on"][replica]["condition"] == "service_healthy"
    text = NGINX_CONF.read_text()
    upstreams = nginx_upstreams(text)
    (proxied,) = re.findall(r"proxy_pass\s+http://([\w.-]+)\s*;", text)
    expected = {f"{name}:{NODE_PORT}" for name in node_replicas()}
    assert set(upstreams[proxied]) == expected
    assert "location = /lb-healthz" in text
    assert any("/lb-healthz" in part for part in lb["healthcheck"]["test"])
    # the node answers 413 itself: nginx must accept at least IDNODE_MAX_BODY_BYTES
    (limit,) = re.findall(r"client_max_body_size\s+(\d+)m;", text)
    assert int(limit) * 1024 * 1024 > int(SETTINGS["max_body_bytes"].default or 0)


def test_compose_bind_mounts_and_volumes_exist() -> None:
    declared = set(compose()["volumes"])
    used: set[str] = set()
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_monitoring_scrapes_replicas_and_provisions_grafana() -> None:
    services = compose_services()
    prometheus = services["prometheus"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    config_target = Path(mounted["./prometheus/prometheus.yml"])
    assert f"--config.file={config_target}" in prometheus["command"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
        assert mounted[f"./prometheus/{rule_file}"] == str(config_target.parent / rule_file)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "idnode"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{NODE_PORT}" for name in node_replicas()}

    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = mounts["./grafana/provisioning"]
    assert provisioning == "/etc/grafana/provisioning"
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "idnode.yml")["providers"]
    (provider,) = providers
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    home = compose_environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        GRAFANA / "dashboards" / Path(home).relative_to(mounts["./grafana/dashboards"])
    ).is_file()
    uids = {t["datasource"]["uid"] for p in dashboard_panels() for t in p["targets"]}
    assert uids == {source["uid"]}
    for name in ("lb", "prometheus", "grafana", "postgres", "idnode-1", "idnode-2"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_compose_environment_is_a_valid_node_configuration() -> None:
    for name, service in idnode_services().items():
        env = compose_environment(service)
        unknown = {k for k in env if k.startswith("IDNODE_") or k == "DATABASE_URL"}
        assert unknown <= SETTING_ENVS, f"{name}: unknown settings {unknown - SETTING_ENVS}"
        config = Config.from_env(env)
        assert config.database_url is not None, f"{name}: no DATABASE_URL"
        assert config.node_key_path.parent == config.sealing_key_path.parent


# --- the other environments stay consistent ------------------------------------------------


def env_example() -> tuple[dict[str, str], set[str]]:
    """The set variables of deploy/env.example and every name it mentions (set or commented)."""
    values: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in (DEPLOY / "env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if match:
            mentioned.add(match.group(2))
            if not match.group(1):
                values[match.group(2)] = match.group(3)
    return values, mentioned


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions(stage="runtime"):
        if instruction == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_key_paths_and_data_dir_agree_everywhere() -> None:
    example, mentioned = env_example()
    assert mentioned - {"IDNODE_CONFIG"} <= SETTING_ENVS, mentioned - SETTING_ENVS
    Config.from_env(example)
    compose_env = compose_environment(compose_services()["idnode-1"])
    configmap = k8s_object("ConfigMap")["data"]
    docker = dockerfile_env()
    data_dirs = {
        example["IDNODE_DATA_DIR"],
        compose_env["IDNODE_DATA_DIR"],
        configmap["IDNODE_DATA_DIR"],
        docker["IDNODE_DATA_DIR"],
    }
    assert data_dirs == {"/var/lib/idnode"}
    unit = (DEPLOY / "idnode.service").read_text()
    assert "ReadWritePaths=/var/lib/idnode" in unit
    documented = {
        line.split("=", 1)[0].lstrip("# "): line.split("=", 1)[1].split()[0]
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if re.match(r"^#?\s*IDNODE_(NODE|SEALING)_KEY=", line)
    }
    for env in (compose_env, configmap):
        assert env["IDNODE_NODE_KEY"] == documented["IDNODE_NODE_KEY"]
        assert env["IDNODE_SEALING_KEY"] == documented["IDNODE_SEALING_KEY"]
        assert env["IDNODE_HOST"] == example["IDNODE_HOST"] == docker["IDNODE_HOST"]
        assert int(env["IDNODE_PORT"]) == int(docker["IDNODE_PORT"]) == NODE_PORT


# --- Kubernetes -----------------------------------------------------------------------------


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    kinds = []
    for name, documents in k8s_documents().items():
        assert documents, f"{name} holds no document"
        for document in documents:
            try:
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {document['kind']}: {exc.message} at {list(exc.path)}")
            kinds.append(document["kind"])
    assert sorted(set(kinds)) == sorted(
        {
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        }
    )
    # the validator really judges: a misspelt field is refused in strict mode
    broken = json.loads(json.dumps(k8s_object("Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def pod_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def quantity(text: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores or bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def test_k8s_deployment_probes_resources_and_security() -> None:
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (node,) = [c for c in pod["containers"] if c["name"] == "idnode"]
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    configmap = k8s_object("ConfigMap")["data"]
    assert ports["http"] == int(configmap["IDNODE_PORT"]) == NODE_PORT
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = node[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == NODE_PORT, probe
    assert node["args"] == ["serve"]
    assert deployment["spec"]["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid() != 0
    for container in pod_containers(pod):
        name = container["name"]
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            request = quantity(resources["requests"][kind])
            limit = quantity(resources["limits"][kind])
            assert 0 < request <= limit, f"{name}: {kind} request {request} > limit {limit}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security.get("runAsNonRoot", True) is True, name
        assert security.get("runAsUser", 1) != 0, name
        if security.get("readOnlyRootFilesystem"):
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert name != "idnode" or "/tmp" in mounted, "the metrics directory needs /tmp"
        assert container["image"] == node["image"], name


def test_k8s_configuration_and_keys_come_from_configmap_and_secrets() -> None:
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (node,) = [c for c in pod["containers"] if c["name"] == "idnode"]
    configmap = k8s_object("ConfigMap")
    references = node["envFrom"]
    (config_name,) = [r["configMapRef"]["name"] for r in references if "configMapRef" in r]
    (secret_name,) = [r["secretRef"]["name"] for r in references if "secretRef" in r]
    assert config_name == configmap["metadata"]["name"]
    database = k8s_object("Secret", secret_name)
    env = {**configmap["data"], **database["stringData"]}
    assert set(env) <= SETTING_ENVS, set(env) - SETTING_ENVS
    config = Config.from_env(env)
    assert config.host == "0.0.0.0" and config.database_url is not None

    volumes = {v["name"]: v for v in pod["volumes"]}
    (secret_volume,) = [v for v in volumes.values() if "secret" in v]
    keys_secret = k8s_object("Secret", secret_volume["secret"]["secretName"])
    assert {i["key"] for i in secret_volume["secret"]["items"]} <= set(keys_secret["stringData"])
    mode = secret_volume["secret"]["defaultMode"]
    assert mode & 0o007 == 0, "others must not read the key files"
    # the node's key files: on the keys volume, mode 600, copied by the init container
    key_dir = str(config.node_key_path.parent)
    assert config.sealing_key_path.parent == config.node_key_path.parent
    node_mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert key_dir in node_mounts, f"nothing mounted at {key_dir}"
    (init,) = pod["initContainers"]
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert init_mounts[key_dir] == node_mounts[key_dir]
    secret_path = next(p for p, v in init_mounts.items() if v == secret_volume["name"])
    script = " ".join(init["command"])
    for path in (config.node_key_path, config.sealing_key_path):
        assert f"install -m 600 {secret_path}/{path.name} {path}" in script


def test_k8s_secret_template_holds_only_placeholders() -> None:
    secrets = k8s_objects("Secret")
    assert len(secrets) == 2
    for secret in secrets:
        name = secret["metadata"]["name"]
        assert "data" not in secret, f"{name}: use stringData placeholders, never encoded data"
        assert secret["stringData"], name
        for key, value in secret["stringData"].items():
            assert "REPLACE_ME" in value, f"{name}.{key} is not a placeholder"
            assert "-----BEGIN" not in value, f"{name}.{key} holds a real key"


def test_k8s_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    job_labels = k8s_object("Job")["spec"]["template"]["metadata"]["labels"]

    service = k8s_object("Service")
    assert selects(service["spec"]["selector"], labels)
    assert not selects(service["spec"]["selector"], job_labels), "the Service selects the Job"
    (node,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in node["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    hpa = k8s_object("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )

    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], job_labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_k8s_migration_job_runs_idnode_migrate() -> None:
    job = k8s_object("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    deployment_pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    (node,) = [c for c in deployment_pod["containers"] if c["name"] == "idnode"]
    assert container["args"] == ["migrate"]
    assert container["image"] == node["image"]
    assert container["envFrom"] == node["envFrom"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"]


# --- PromQL: rules and dashboard use the node's real metrics -------------------------------


def test_promql_reader_finds_names_labels_and_mistakes() -> None:
    selectors, grouping = parse_promql(
        'sum by (instance) (rate(idnode_http_requests_total{code=~"5..", job="x"}[5m]))'
        " / ignoring (code) histogram_quantile(0.99, sum by (le) ("
        'rate(idnode_http_request_duration_seconds_bucket{endpoint!~"a|b"}[$__rate_interval])))'
        " and on (instance) up offset 5m > 1e3"
    )
    assert selectors == [
        ("idnode_http_requests_total", frozenset({"code", "job"})),
        ("idnode_http_request_duration_seconds_bucket", frozenset({"endpoint"})),
        ("up", frozenset()),
    ]
    assert grouping == {"instance", "code", "le"}
    assert metric_catalog()["idnode_http_request_duration_seconds_bucket"] == {
        "frontend",
        "endpoint",
        "le",
    }
    assert promql_problems("rate(idnode_cache_requests_total[5m])") == []
    assert promql_problems("rate(idnode_cache_misses_total[5m])") == [
        "unknown metric 'idnode_cache_misses_total'"
    ]
    assert promql_problems('rate(idnode_cache_hits_total{reason="x"}[5m])') == [
        "idnode_cache_hits_total has no label(s) ['reason']"
    ]
    assert promql_problems("sum by (kind) (idnode_cache_entries)") == [
        "grouping label 'kind' is on none of the metrics"
    ]


def test_alert_rules_use_only_real_metrics_and_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert promql_problems(rule["expr"]) == [], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    used = {name for rule in rules for name, _ in parse_promql(rule["expr"])[0]}
    for required in (
        "idnode_http_requests_total",
        "idnode_http_request_duration_seconds_bucket",
        "idnode_cache_hits_total",
        "idnode_cache_requests_total",
        "idnode_cache_served_stale_total",
        "idnode_auth_failures_total",
        "idnode_security_rejections_total",
        "up",
    ):
        assert required in used, f"no alert on {required}"


def test_rule_tests_cover_every_alert_firing_and_quiet() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    tests = load_yaml(PROMETHEUS / "rules.test.yml")
    assert tests["rule_files"] == ["rules.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
        for series in case["input_series"]:
            assert promql_problems(series["series"]) == [], series["series"]
    assert firing == alerts, f"alerts never tested firing: {alerts - firing}"
    assert quiet == alerts, f"alerts never tested quiet: {alerts - quiet}"


def test_grafana_dashboard_panels_query_real_metrics() -> None:
    board = dashboard()
    assert board["uid"] == "idnode"
    panels = dashboard_panels()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        title = panel["title"]
        assert panel["targets"], f"panel {title!r} has no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert promql_problems(target["expr"]) == [], f"{title}: {target['expr']}"
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
    for variable in board["templating"]["list"]:
        (inner,) = re.findall(r"label_values\((.*),\s*(\w+)\)", variable["definition"])
        assert promql_problems(inner[0]) == [], variable["name"]
        assert inner[1] in TARGET_LABELS | metric_catalog()[parse_promql(inner[0])[0][0][0]]
    used = {
        name
        for panel in panels
        for target in panel["targets"]
        for name, _ in parse_promql(target["expr"])[0]
    }
    for required in (
        "idnode_http_requests_total",
        "idnode_http_request_duration_seconds_bucket",
        "idnode_cache_hits_total",
        "idnode_cache_requests_total",
        "idnode_db_pool_connections",
        "idnode_db_query_duration_seconds_bucket",
        "idnode_registry_writes_total",
        "idnode_security_rejections_total",
    ):
        assert required in used, f"no panel shows {required}"
    quantiles = {
        q
        for panel in panels
        for target in panel["targets"]
        for q in re.findall(r"histogram_quantile\((0\.\d+)", target["expr"])
    }
    assert {"0.5", "0.99"} <= quantiles


# --- promtool ---------------------------------------------------------------------------------


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_promtool_check_config(promtool: str) -> None:
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "prometheus.yml is valid" in output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output  # rules.yml checked too


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_promtool_test_rules(promtool: str, tmp_path: Path) -> None:
    result = run([promtool, "test", "rules", "rules.test.yml"], cwd=PROMETHEUS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output
    # the firing cases really depend on the rules: a threshold ten times higher fails them
    shutil.copy(PROMETHEUS / "rules.test.yml", tmp_path)
    rules = (PROMETHEUS / "rules.yml").read_text()
    assert rules.count(") > 0.05") == 1
    (tmp_path / "rules.yml").write_text(rules.replace(") > 0.05", ") > 0.5"))
    loosened = run([promtool, "test", "rules", "rules.test.yml"], cwd=tmp_path)
    assert loosened.returncode != 0
    assert "IdnodeHighErrorRate" in loosened.stdout + loosened.stderr


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuations joined, comments dropped;
    only those of ``stage`` (``FROM … AS stage``) when given."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        instruction, _, arguments = line.partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    if stage is None:
        return instructions
    selected: list[tuple[str, str]] = []
    inside = False
    for instruction, arguments in instructions:
        if instruction == "FROM":
            inside = arguments.split()[-1] == stage and " AS " in arguments.upper()
        if inside:
            selected.append((instruction, arguments))
    assert selected, f"no stage {stage}"
    return selected


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def dockerfile_uid() -> int:
    users = [a for i, a in dockerfile_instructions() if i == "USER"]
    assert users, "the Dockerfile sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "USER must be numeric for Kubernetes' runAsNonRoot check"
    return int(user)


def dockerignore_excludes(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore keeps ``path`` out of the build context."""
    excluded = False
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if part == "**"
            else "[^/]*"
            if part == "*"
            else "[^/]"
            if part == "?"
            else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_builds_a_non_root_idnode_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        a.split("=", 1)
        for i, a in instructions[: [i for i, _ in instructions].index("FROM")]
        if i == "ARG"
    )
    stages: list[str] = []
    for instruction, arguments in instructions:
        if instruction == "FROM":
            words = arguments.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            assert image in stages or image.startswith("python:3.11-slim"), image
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(words[2])
    runtime = dockerfile_instructions(stage=stages[-1])
    assert dockerfile_uid() != 0
    assert [a for i, a in runtime if i == "USER"], "USER must be set in the final stage"
    exposed = {p for i, a in runtime if i == "EXPOSE" for p in a.split()}
    assert {"8000", "8443"} <= exposed
    env = dockerfile_env()
    assert env["IDNODE_HOST"] == "0.0.0.0"
    assert "DATABASE_URL" not in env, "DATABASE_URL comes from the environment at run time"
    assert set(k for k in env if k.startswith("IDNODE_")) <= SETTING_ENVS
    (volume,) = [exec_form(a) for i, a in runtime if i == "VOLUME"]
    assert env["IDNODE_DATA_DIR"] in volume
    (health,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert any(i == "RUN" and "pip install ." in a for i, a in instructions)
    (entrypoint,) = [exec_form(a) for i, a in runtime if i == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for i, a in runtime if i == "CMD"]
    assert cmd == ["serve"]
    script = DEPLOY / Path(entrypoint[0]).name
    assert script.is_file() and os.access(script, os.X_OK)
    assert re.search(r'^exec idnode "\$@"$', script.read_text(), re.MULTILINE)


def test_dockerfile_copies_only_files_that_exist_and_reach_the_context() -> None:
    copied: set[str] = set()
    for instruction, arguments in dockerfile_instructions():
        if instruction not in ("COPY", "ADD"):
            continue
        words = shlex.split(arguments)
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, arguments
        for source in sources:
            matches = list(ROOT.glob(source.rstrip("/")))
            assert matches, f"COPY {source}: nothing in the repository"
            for match in matches:
                copied.add(match.relative_to(ROOT).as_posix())
                files = [match] if match.is_file() else list(match.rglob("*"))
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if file.is_file() and "__pycache__" not in relative:
                        assert not dockerignore_excludes(relative), f"{relative} is ignored"
    # `pip install .` needs the project file, its readme and every package it lists
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= set(project["tool"]["setuptools"]["packages"])
    assert needed <= copied, f"the build stage lacks {needed - copied}"
    for private in (".venv/bin/python", ".git/config", ".data/pg/PG_VERSION", "tests/conftest.py"):
        assert dockerignore_excludes(private), f"{private} would reach the build context"


def test_entrypoint_refuses_to_start_without_a_database(tmp_path: Path) -> None:
    fake = tmp_path / "idnode"
    fake.write_text('#!/bin/sh\necho "idnode called with: $*"\n')
    fake.chmod(0o755)
    script = str(DEPLOY / "docker-entrypoint.sh")
    base = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    refused = run(["sh", script, "serve"], env=base)
    assert refused.returncode == 2
    assert "DATABASE_URL" in refused.stderr and "idnode called" not in refused.stdout
    served = run(["sh", script, "serve"], env={**base, "DATABASE_URL": "postgresql://db/x"})
    assert served.returncode == 0 and served.stdout.strip() == "idnode called with: serve"
    shown = run(["sh", script, "config", "show"], env=base)
    assert shown.returncode == 0 and shown.stdout.strip() == "idnode called with: config show"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_dockerfile_healthcheck_passes_and_fails_for_real(health_server: int) -> None:
    (health,) = [a for i, a in dockerfile_instructions(stage="runtime") if i == "HEALTHCHECK"]
    command = exec_form(health[health.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    command[0] = sys.executable
    env = {**os.environ, "IDNODE_PORT": str(health_server)}
    assert run(command, env=env, timeout=10).returncode == 0
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health) as closed:
        free_port = closed.server_address[1]
    env["IDNODE_PORT"] = str(free_port)  # nothing listens there any more
    assert run(command, env=env, timeout=10).returncode != 0


# --- nginx ---------------------------------------------------------------------------------


@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_nginx_configuration_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    text = NGINX_CONF.read_text()
    local = re.sub(r"(^\s*server\s+)[A-Za-z][\w.-]*(:\d+)", r"\g<1>127.0.0.1\2", text, flags=re.M)
    assert local != text and "idnode-1" not in local
    copy = tmp_path / "nginx.conf"
    copy.write_text(local)
    result = run([nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(copy)])
    assert result.returncode == 0, result.stderr
    # nginx -t really judges: an unknown directive is refused
    copy.write_text(local.replace("keepalive 64;", "keepalive_bogus 64;"))
    refused = run([nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(copy)])
    assert refused.returncode != 0 and "keepalive_bogus" in refused.stderr
