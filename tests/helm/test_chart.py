"""Tests of the Helm chart in helm/casola-auth.

Real Helm v4 (the Go SDK, through the PyPI package helm-python-sdk) lints and renders the chart
offline; kubernetes-validate checks every rendered manifest against the Kubernetes OpenAPI
schemas; checkov scans the rendered manifests. No cluster, chart repository or network is used.

Run with `bash scripts/test-helm.sh` (it makes the venv) or `python -m pytest -q tests/helm`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - older interpreters
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHART = ROOT / "helm" / "casola-auth"
RELEASE = "auth"
NAMESPACE = "casola"
FULLNAME = f"{RELEASE}-casola-auth"

# Kubernetes versions the manifests must be valid for: the chart's floor (kubeVersion >=1.30:
# preStop sleep action) and the newest schema kubernetes-validate ships.
KUBE_FLOOR = "1.30.0"
KUBE_VERSIONS = sorted({KUBE_FLOOR, kubernetes_validate.latest_version()})

# Kinds without a schema in kubernetes-validate (CRDs). They are skipped for OpenAPI schema
# validation only; test_servicemonitor checks their shape by hand.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((HERE / name).read_text()) or {}


VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": load_values("values-production.yaml"),
    "independent": load_values("values-independent.yaml"),
}


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_raw(chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    return chart.render(
        copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
    )


def docs_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a rendering (NOTES.txt and empty templates left out)."""
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                out.append(doc)
    return out


def render(chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return docs_of(render_raw(chart, values))


def of_kind(docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_specs(docs) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload that runs pods."""
    specs = []
    for d in docs:
        if d["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            specs.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    assert specs, "no workload rendered"
    return specs


def server_container(docs) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_toml(docs) -> dict[str, Any]:
    cm = one(docs, "ConfigMap")
    return tomllib.loads(cm["data"]["config.toml"])


def env_map(container) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def with_values(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A copy of base with overrides at double-underscore paths (database__urlKey="k")."""
    values = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


# --------------------------------------------------------------------------------------------
# lint and render


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name):
    report = helm.lint(
        CHART,
        copy.deepcopy(VALUE_SETS[name]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kubernetes_validate.latest_version()}",
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity: 1 info, 2 warning, 3 error. Strict: no warning either. The only info Helm
    # gives is "icon is recommended" (the chart has no public icon URL).
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []
    infos = [m["error"] for m in report["messages"] if m["severity"] == 1]
    assert set(infos) <= {"icon is recommended"}, infos


def test_lint_reports_schema_violations():
    """Lint is not a rubber stamp: bad values make it report errors."""
    report = helm.lint(CHART, {"replicaCount": "three"}, strict=True, namespace=NAMESPACE)
    assert report["errors"], report
    assert any("replicaCount" in e for e in report["errors"])


EXPECTED_KINDS = {
    "default": {"ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount"},
    "production": {
        "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount",
        "NetworkPolicy", "ServiceMonitor",
    },
    "independent": {
        "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount",
        "HorizontalPodAutoscaler",
    },
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_render_kinds(chart, name):
    docs = render(chart, VALUE_SETS[name])
    kinds = [d["kind"] for d in docs]
    assert sorted(set(kinds)) == sorted(EXPECTED_KINDS[name])
    assert len(kinds) == len(set(kinds)), f"duplicate kinds: {kinds}"
    # The chart never creates a Secret: credentials are the operator's.
    assert "Secret" not in kinds
    for d in docs:
        assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_kubernetes_validate(chart, name, version):
    docs = render(chart, VALUE_SETS[name])
    validated = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            # CRD (prometheus-operator): no schema in kubernetes-validate; shape checked below.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        # strict: unknown fields (typos such as "sevice:") are errors too.
        kubernetes_validate.validate(doc, version, strict=True)
        validated += 1
    assert validated >= 6


def test_kubernetes_validate_catches_typos(chart):
    """Guard against a validator that accepts anything."""
    deployment = one(render(chart), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["sevice"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


# --------------------------------------------------------------------------------------------
# checkov


def checkov_skips() -> dict[str, dict[str, str]]:
    skips = yaml.safe_load((HERE / "checkov-skips.yaml").read_text())
    for group, entries in skips.items():
        for check_id, reason in (entries or {}).items():
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check_id), check_id
            assert isinstance(reason, str) and len(reason.split()) >= 3, (
                f"{group}/{check_id}: every skip needs a written reason"
            )
    return skips


def run_checkov(directory: Path, min_passed: int = 1) -> list[tuple[str, str]]:
    env = dict(os.environ)
    # Offline: no Prisma Cloud mapping download, no PyPI version check.
    env.update(CKV_SKIP_PACKAGE_UPDATE_CHECK="true", BC_SKIP_MAPPING="TRUE", LOG_LEVEL="WARNING")
    proc = subprocess.run(
        [
            sys.executable, "-m", "checkov.main",
            "--directory", str(directory),
            "--framework", "kubernetes", "secrets",
            "--output", "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # exit 1 means "some check failed"; anything else non-zero is a crash.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    kinds = {r.get("check_type") for r in reports}
    assert "kubernetes" in kinds, f"checkov scanned nothing as kubernetes: {proc.stdout[:500]}"
    failed = []
    for r in reports:
        assert r["summary"]["parsing_errors"] == 0, r["summary"]
        if r["check_type"] == "kubernetes":
            assert r["summary"]["passed"] >= min_passed, r["summary"]
        for check in r["results"]["failed_checks"]:
            failed.append((check["check_id"], check["resource"]))
    return failed


@pytest.mark.parametrize("name", VALUE_SETS)
def test_checkov(chart, name, tmp_path):
    rendered = render_raw(chart, VALUE_SETS[name])
    for path, text in rendered.items():
        if path.endswith(".yaml") and text.strip():
            (tmp_path / Path(path).name).write_text(text)
    skips = checkov_skips()
    allowed = set(skips.get("all") or {}) | set(skips.get(name) or {})
    # About 170 kubernetes checks pass on this chart; far fewer means checkov saw too little.
    failed = run_checkov(tmp_path, min_passed=100)
    failed_ids = {check_id for check_id, _ in failed}
    unexpected = sorted(f for f in failed if f[0] not in allowed)
    assert unexpected == [], f"checkov failures not in tests/helm/checkov-skips.yaml: {unexpected}"
    stale = sorted(allowed - failed_ids)
    assert stale == [], f"skips that no longer fail for {name!r}; remove them: {stale}"


def test_checkov_secrets_scan_catches_a_leaked_url(tmp_path):
    """The secrets framework used above really flags a password in a ConfigMap."""
    leaked = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "leak", "namespace": NAMESPACE},
        "data": {"config.toml": 'database_url = "postgres://casola:S3cr3tPassw0rdXyz@db.internal:5432/casola"\n'},
    }
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump(leaked))
    failed = run_checkov(tmp_path)
    assert any(check_id.startswith("CKV_SECRET_") for check_id, _ in failed), failed


# --------------------------------------------------------------------------------------------
# the properties that matter


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_are_grpc(chart, name):
    values = VALUE_SETS[name]
    docs = render(chart, values)
    container = server_container(docs)
    grpc_port = container["ports"][0]
    assert grpc_port["name"] == "grpc" and grpc_port["containerPort"] == 50051

    liveness = container["livenessProbe"]
    readiness = container["readinessProbe"]
    # grpc.health.v1 probes only: no httpGet/tcpSocket/exec.
    assert set(liveness) - {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"} == {"grpc"}
    assert set(readiness) - {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"} == {"grpc"}
    # Liveness on the "liveness" service, which never depends on the database.
    assert liveness["grpc"] == {"port": 50051, "service": "liveness"}
    # Readiness on the overall service "", which follows the store.
    assert readiness["grpc"] == {"port": 50051, "service": ""}
    startup = container.get("startupProbe")
    assert startup is not None and startup["grpc"] == {"port": 50051, "service": "liveness"}


def test_startup_probe_optional(chart):
    container = server_container(render(chart, {"probes": {"startup": {"enabled": False}}}))
    assert "startupProbe" not in container
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_migration_job_is_a_hook(chart, name):
    docs = render(chart, VALUE_SETS[name])
    job = one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation", "hook-succeeded",
    }
    int(annotations["helm.sh/hook-weight"])
    spec = job["spec"]
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] >= 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == server_container(docs)["image"]
    # A pre-install hook runs before the release's ConfigMap and ServiceAccount exist (an
    # operator's existing ConfigMap, like the Postgres CA, is fine).
    release_configmap = one(docs, "ConfigMap")["metadata"]["name"]
    assert all(v.get("configMap", {}).get("name") != release_configmap for v in pod.get("volumes", []))
    assert pod.get("serviceAccountName") in (None, "")


def test_migrations_can_be_disabled(chart):
    assert of_kind(render(chart, {"migrations": {"enabled": False}}), "Job") == []


FAKE_PASSWORD = "hunter2-Sup3rSecret"
FAKE_URL = f"postgres://casola:{FAKE_PASSWORD}@db.internal:5432/casola?sslmode=require"
URL_WITH_PASSWORD = re.compile(r"postgres(ql)?://[^\s/:@\"']+:[^\s@\"']+@")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_secret_in_configmaps(chart, name):
    values = with_values(
        VALUE_SETS[name],
        database__existingSecret="fake-db-secret",
        database__urlKey="fake-url-key",
    )
    docs = render(chart, values)
    for cm in of_kind(docs, "ConfigMap"):
        blob = json.dumps(cm)
        assert not URL_WITH_PASSWORD.search(blob), cm
        assert "password" not in blob.lower(), cm
        assert "fake-db-secret" not in blob and "fake-url-key" not in blob
        for text in cm["data"].values():
            assert "database_url" not in text
    # and the env is a reference, never a value
    env = env_map(server_container(docs))
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fake-db-secret", "key": "fake-url-key"}


@pytest.mark.parametrize(
    "bad",
    [
        {"database": {"url": FAKE_URL}},
        {"database": {"password": FAKE_PASSWORD}},
        {"config": {"databaseUrl": FAKE_URL}},
        {"databaseUrl": FAKE_URL},
        {"extraEnv": [{"name": "DATABASE_URL", "value": FAKE_URL}]},
        {"extraEnv": [{"name": "CASOLA_AUTH_LISTEN_DATABASE_URL", "value": FAKE_URL}]},
    ],
    ids=["database.url", "database.password", "config.databaseUrl", "databaseUrl", "extraEnv", "extraEnv-listen"],
)
def test_values_have_no_place_for_a_database_password(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):
        render(chart, bad)


def test_extra_env_may_reference_secrets(chart):
    ref = {"name": "OTHER_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    docs = render(chart, {"extraEnv": [ref, {"name": "RUST_LOG", "value": "debug"}]})
    env = env_map(server_container(docs))
    assert env["OTHER_DATABASE_URL"] == ref
    assert env["RUST_LOG"]["value"] == "debug"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_locked_down(chart, name):
    docs = render(chart, VALUE_SETS[name])
    for where, pod in pod_specs(docs):
        assert pod["automountServiceAccountToken"] is False, where
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["runAsUser"] == 65532, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc.get("runAsUser", psc["runAsUser"]) != 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert "@" in c["image"] or re.search(r":[\w][\w.-]*$", c["image"]), where
            assert not c["image"].endswith(":latest"), where
    for sa in of_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", VALUE_SETS)
def test_database_url_from_secret(chart, name):
    values = VALUE_SETS[name]
    docs = render(chart, values)
    db = values.get("database", {})
    secret = db.get("existingSecret") or f"{FULLNAME}-database"
    key = db.get("urlKey", "database-url")
    for where, pod in pod_specs(docs):
        (container,) = pod["containers"]
        env = env_map(container)
        entry = env["DATABASE_URL"]
        assert "value" not in entry, where
        assert entry["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, where
        for e in container["env"]:
            if "value" in e:
                assert not URL_WITH_PASSWORD.search(e["value"]), (where, e)
    env = env_map(server_container(docs))
    listen = db.get("listen", {})
    if listen.get("urlKey"):
        assert env["CASOLA_AUTH_LISTEN_DATABASE_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": listen.get("existingSecret") or secret, "key": listen["urlKey"]}
        }
    else:
        assert "CASOLA_AUTH_LISTEN_DATABASE_URL" not in env
    assert env["CASOLA_AUTH_LISTEN"]["value"] == "0.0.0.0:50051"
    assert env["CASOLA_AUTH_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090"


def test_independent_values_use_the_existing_secret(chart):
    env = env_map(server_container(render(chart, VALUE_SETS["independent"])))
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "my-postgres-credentials", "key": "url"}


def test_listen_url_defaults_to_the_database_secret(chart):
    env = env_map(server_container(render(chart, {"database": {"listen": {"urlKey": "direct-url"}}})))
    assert env["CASOLA_AUTH_LISTEN_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{FULLNAME}-database", "key": "direct-url",
    }


@pytest.mark.parametrize("name", VALUE_SETS)
def test_verified_tls_to_postgres_is_the_default(chart, name):
    """Issue 16: the chart requires verified TLS unless database.tls says `url`, for the
    server and the migration Job alike."""
    for where, pod in pod_specs(render(chart, VALUE_SETS[name])):
        (container,) = pod["containers"]
        assert env_map(container)["CASOLA_AUTH_STORE__REQUIRE_TLS"]["value"] == "true", where


def test_verified_tls_has_an_explicit_opt_out(chart):
    for where, pod in pod_specs(render(chart, {"database": {"tls": "url"}})):
        (container,) = pod["containers"]
        assert "CASOLA_AUTH_STORE__REQUIRE_TLS" not in env_map(container), where


def checksum(chart, values) -> str:
    annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    value = annotations["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    return value


def test_checksum_follows_the_config(chart):
    base = checksum(chart, {})
    assert checksum(chart, {}) == base, "checksum must be stable"
    changes = [
        {"config": {"argon2": {"memoryKib": 65536}}},
        {"config": {"store": {"poolSize": 20}}},
        {"config": {"shutdownGraceSeconds": 20}},
        {"config": {"envoy": {"routes": [{"pathPrefix": "/x", "scopes": ["user:read"]}]}}},
        {"scopeCatalog": VALUE_SETS["production"]["scopeCatalog"]},
    ]
    seen = {base}
    for change in changes:
        value = checksum(chart, change)
        assert value not in seen, f"checksum did not change for {change}"
        seen.add(value)
    # Values that are not in the ConfigMap do not roll the pods through the checksum.
    assert checksum(chart, {"replicaCount": 5}) == base


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "three"},
        {"replicaCount": 0},
        {"replicas": 3},
        {"image": {"tag": "latest"}},
        {"image": {"digest": "md5:abc"}},
        {"config": {"logFormat": "xml"}},
        {"database": {"tls": "verify-ca"}},
        {"config": {"argon2": {"memoryKib": "lots"}}},
        {"config": {"store": {"poolSize": 0}}},
        {"config": {"console": {"enabled": "yes"}}},
        {"config": {"envoy": {"routes": [{"pathPrefix": "no-slash", "scopes": []}]}}},
        {"config": {"envoy": {"routes": [{"pathPrefix": "/x", "scopes": ["NotAScope"]}]}}},
        {"config": {"envoy": {"routes": [{"pathPrefix": "/x", "scopes": [], "match": "some"}]}}},
        {"networkPolicy": {"enabled": True, "allowedNamespaces": ["Not_A_Namespace"]}},
        {"podDisruptionBudget": {"enabled": True, "minAvailable": "half"}},
        {"serviceMonitor": {"enabled": True, "interval": "often"}},
        {"database": {"existingSecret": "Bad_Name"}},
        {"securityContext": {"runAsUser": 0}},
        {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 150}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True)[:60],
)
def test_schema_rejects_bad_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_schema_accepts_the_value_files(chart, name):
    chart.validate_schema(copy.deepcopy(VALUE_SETS[name]))


def test_schema_covers_every_default(chart):
    """values.yaml itself validates, and the schema is strict at the top level."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"]), set(defaults) - set(schema["properties"])
    chart.validate_schema(defaults)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_termination_grace_covers_prestop_and_drain(chart, name):
    values = VALUE_SETS[name]
    docs = render(chart, values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert set(container["lifecycle"]["preStop"]) == {"sleep"}, "distroless: no exec preStop"
    drain = config_toml(docs)["shutdown_grace_seconds"]
    assert drain == values.get("config", {}).get("shutdownGraceSeconds", 10)
    assert sleep == values.get("lifecycle", {}).get("preStopSleepSeconds", 5)
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_termination_grace_default_is_derived(chart):
    pod = one(render(chart), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 10 + 5
    pod = one(render(chart, {"config": {"shutdownGraceSeconds": 30}}), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5


def test_termination_grace_too_short_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, {"terminationGracePeriodSeconds": 15})
    pod = one(render(chart, {"terminationGracePeriodSeconds": 16}), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 16


def test_config_toml_defaults(chart):
    docs = render(chart)
    config = config_toml(docs)
    assert config == {
        "shutdown_grace_seconds": 10,
        "log_format": "json",
        "argon2": {"memory_kib": 1024, "iterations": 1, "parallelism": 1},
        # The verify pool's size follows the machine unless set (src/server.rs).
        "verify": {"create_workers": 1, "create_queue": 32},
        "store": {"pool_size": 10},
        # The server's own defaults (src/config.rs LimitsConfig), written out.
        "limits": {
            "max_in_flight": 2048,
            "decision_deadline_ms": 150,
            "max_concurrent_streams": 32,
            "max_header_list_bytes": 16384,
            "max_pending_accept_reset_streams": 256,
            "failed_verifies_burst": 100,
            "failed_verifies_per_second": 10,
            "service_failed_verifies_burst": 1000,
            "service_failed_verifies_per_second": 100,
            "failed_verify_cooldown_seconds": 30,
            "max_cold_reads": 128,
            "create_burst": 20,
            "creates_per_second": 5,
            "max_connections": 10000,
            "handshake_timeout_ms": 10000,
            "side_max_connections": 64,
            "side_idle_timeout_ms": 60000,
        },
        "console": {"enabled": False},
        "envoy": {"routes": []},
    }
    cm = one(docs, "ConfigMap")
    assert set(cm["data"]) == {"config.toml"}
    container = server_container(docs)
    assert container["args"] == ["serve", "--config", "/etc/casola-auth/config.toml"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/casola-auth" and mounts["config"]["readOnly"]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]


def test_the_console_is_off_by_default_and_can_be_turned_on(chart):
    assert config_toml(render(chart))["console"] == {"enabled": False}
    assert config_toml(render(chart, {"config": {"console": {"enabled": True}}}))["console"] == {"enabled": True}


def test_config_toml_production(chart):
    values = VALUE_SETS["production"]
    docs = render(chart, values)
    config = config_toml(docs)
    assert config["shutdown_grace_seconds"] == 15
    assert config["store"] == {"pool_size": 8}
    assert config["verify"] == {"workers": 2, "queue": 256, "create_workers": 1, "create_queue": 16}
    assert config["catalog"] == {"file": "/etc/casola-auth/scopes.toml"}
    expected_routes = []
    for route in values["config"]["envoy"]["routes"]:
        entry = {"path_prefix": route["pathPrefix"], "scopes": route["scopes"], "match": route.get("match", "all")}
        if route.get("method"):
            entry["method"] = route["method"]
        expected_routes.append(entry)
    assert config["envoy"]["routes"] == expected_routes
    catalog_text = one(docs, "ConfigMap")["data"]["scopes.toml"]
    assert tomllib.loads(catalog_text) == tomllib.loads(values["scopeCatalog"])


def test_route_strings_are_escaped(chart):
    tricky = '/a"b\\c'
    docs = render(chart, {"config": {"envoy": {"routes": [{"pathPrefix": tricky, "scopes": ["user:read"], "method": "POST"}]}}})
    (route,) = config_toml(docs)["envoy"]["routes"]
    assert route == {"path_prefix": tricky, "scopes": ["user:read"], "match": "all", "method": "POST"}


def test_invalid_scope_catalog_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match="scopeCatalog"):
        render(chart, {"scopeCatalog": "[[categories]\nname = "})


def test_service_ports(chart):
    service = one(render(chart), "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051 and ports["grpc"]["appProtocol"] == "grpc"
    assert ports["grpc"]["targetPort"] == "grpc"
    assert ports["metrics"]["port"] == 9090 and ports["metrics"]["targetPort"] == "metrics"
    deployment = one(render(chart), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for k, v in service["spec"]["selector"].items():
        assert pod_labels[k] == v
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_replicas_and_hpa(chart):
    default = render(chart)
    assert one(default, "Deployment")["spec"]["replicas"] == 2
    assert of_kind(default, "HorizontalPodAutoscaler") == []

    assert one(render(chart, VALUE_SETS["production"]), "Deployment")["spec"]["replicas"] == 3

    docs = render(chart, VALUE_SETS["independent"])
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}


def test_hpa_min_above_max_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match="minReplicas"):
        render(chart, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}})


def test_pdb(chart):
    docs = render(chart)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert of_kind(render(chart, {"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget") == []
    other = one(render(chart, {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": 1}}), "PodDisruptionBudget")
    assert other["spec"]["maxUnavailable"] == 1 and "minAvailable" not in other["spec"]
    with pytest.raises(helm.HelmRenderError):
        render(chart, {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}})


def test_service_account(chart):
    docs = render(chart)
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    docs = render(chart, {"serviceAccount": {"create": False, "name": "existing"}})
    assert of_kind(docs, "ServiceAccount") == []
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_networkpolicy_production(chart):
    values = VALUE_SETS["production"]["networkPolicy"]
    docs = render(chart, VALUE_SETS["production"])
    policy = one(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    job_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    for k, v in spec["podSelector"]["matchLabels"].items():
        assert pod_labels[k] == v and job_labels[k] == v
    rules = {tuple(p["port"] for p in r["ports"]): r for r in spec["ingress"]}
    assert set(rules) == {("grpc",), ("metrics",)}, "every ingress rule is limited to one port"
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without `from` would admit everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
    grpc_from = rules[("grpc",)]["from"]
    gateway = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": values["gateway"]["namespace"]}},
        "podSelector": {"matchLabels": values["gateway"]["podLabels"]},
    }
    assert gateway in grpc_from
    for ns in values["allowedNamespaces"]:
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} in grpc_from
    assert len(grpc_from) == 1 + len(values["allowedNamespaces"])
    (metrics_from,) = rules[("metrics",)]["from"]
    assert metrics_from["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert metrics_from["podSelector"]["matchLabels"] == values["metrics"]["podLabels"]


def test_networkpolicy_defaults_to_the_release_namespace(chart):
    policy = one(render(chart, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    grpc_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "grpc")
    assert grpc_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}, "podSelector": {}}
    ]


def test_servicemonitor(chart):
    docs = render(chart, VALUE_SETS["production"])
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    for k, v in spec["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][k] == v
    (endpoint,) = spec["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "15s", "scrapeTimeout": "10s"}
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert of_kind(render(chart), "ServiceMonitor") == []


def test_topology_spread_selects_the_server_pods(chart):
    deployment = one(render(chart), "Deployment")
    pod = deployment["spec"]["template"]
    constraints = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in constraints:
        assert c["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert c["matchLabelKeys"] == ["pod-template-hash"]


def test_image_reference(chart):
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = server_container(render(chart))["image"]
    assert image == f"ghcr.io/casola/casola-auth:{meta['appVersion']}"
    prod = VALUE_SETS["production"]["image"]
    image = server_container(render(chart, VALUE_SETS["production"]))["image"]
    assert image == f"{prod['repository']}:{prod['tag']}@{prod['digest']}"


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["type"] == "application"
    assert meta["name"] == "casola-auth"


def test_notes_show_grpcurl(chart):
    notes = next(text for path, text in render_raw(chart).items() if path.endswith("NOTES.txt"))
    assert (
        'grpcurl -plaintext -H "authorization: Bearer $TOKEN" localhost:50051 '
        "casola.auth.v1.AuthorizationService/WhoAmI" in notes
    )
    assert "grpcurl -plaintext localhost:50051 list" in notes
    assert f"{FULLNAME}-database" in notes


# ----------------------------------------------------------------------------------------
# the rendered configuration is one the real binary accepts


def casola_auth_bin() -> Path | None:
    raw = os.environ.get("CASOLA_AUTH_BIN")
    if not raw:
        return None
    p = Path(raw)
    return p if p.is_absolute() else ROOT / p


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_binary_accepts_the_rendered_config(chart, name, tmp_path):
    binary = casola_auth_bin()
    if binary is None:
        pytest.skip("CASOLA_AUTH_BIN is not set (scripts/test.sh sets it)")
    assert binary.exists(), f"CASOLA_AUTH_BIN={binary} does not exist"
    docs = render(chart, copy.deepcopy(VALUE_SETS[name]))
    cm = one(docs, "ConfigMap")
    text = cm["data"]["config.toml"]
    if "scopes.toml" in cm["data"]:
        (tmp_path / "scopes.toml").write_text(cm["data"]["scopes.toml"])
        # The pod mounts the ConfigMap at /etc/casola-auth; here the files sit in tmp_path.
        text = text.replace("/etc/casola-auth/scopes.toml", str(tmp_path / "scopes.toml"))
    (tmp_path / "config.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASOLA_AUTH_") and k != "DATABASE_URL"}
    cp = subprocess.run(
        [str(binary), "check-config", "--config", str(tmp_path / "config.toml")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert cp.returncode == 0, f"casola-auth rejected the rendered config:\n{cp.stderr}\n{text}"
    assert "configuration ok" in cp.stdout
    routes = len(config_toml(docs).get("envoy", {}).get("routes", []))
    assert f"envoy: {routes} fallback routes" in cp.stdout


def test_the_binary_rejects_a_rendered_config_with_an_unknown_route_scope(chart, tmp_path):
    binary = casola_auth_bin()
    if binary is None:
        pytest.skip("CASOLA_AUTH_BIN is not set (scripts/test.sh sets it)")
    values = {"config": {"envoy": {"routes": [
        {"method": "GET", "pathPrefix": "/api/", "scopes": ["user:read", "no-such:scope"]}
    ]}}}
    cm = one(render(chart, values), "ConfigMap")
    (tmp_path / "config.toml").write_text(cm["data"]["config.toml"])
    cp = subprocess.run([str(binary), "check-config", "--config", str(tmp_path / "config.toml")],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode != 0
    assert "no-such:scope" in cp.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_get_no_service_links(chart, name):
    # Kubernetes would inject CASOLA_AUTH_SERVICE_HOST etc. for a Service named casola-auth.
    for kind, spec in pod_specs(render(chart, copy.deepcopy(VALUE_SETS[name]))):
        assert spec.get("enableServiceLinks") is False, kind


def test_the_postgres_ca_reaches_the_server_and_the_migration_job(chart):
    docs = render(chart, copy.deepcopy(VALUE_SETS["production"]))
    for kind, spec in pod_specs(docs):
        container = spec["containers"][0]
        env = env_map(container)
        assert env["CASOLA_AUTH_STORE__TLS_CA_FILE"]["value"] == "/etc/casola-auth-tls/ca.crt", kind
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["postgres-ca"]["mountPath"] == "/etc/casola-auth-tls", kind
        assert mounts["postgres-ca"]["readOnly"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["postgres-ca"]["configMap"]["name"] == "postgres-ca", kind
    # From a Secret instead.
    values = with_values(VALUE_SETS["default"], database__tlsCa={"secret": "pg-ca", "key": "root.pem"})
    for kind, spec in pod_specs(render(chart, values)):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["postgres-ca"]["secret"]["secretName"] == "pg-ca", kind
        assert env_map(spec["containers"][0])["CASOLA_AUTH_STORE__TLS_CA_FILE"]["value"].endswith("/root.pem")
    # None by default: no variable, no volume.
    for kind, spec in pod_specs(render(chart, {})):
        assert "CASOLA_AUTH_STORE__TLS_CA_FILE" not in env_map(spec["containers"][0]), kind
        assert all(v["name"] != "postgres-ca" for v in spec["volumes"]), kind


def test_a_postgres_ca_from_both_a_configmap_and_a_secret_is_refused(chart):
    values = with_values(VALUE_SETS["default"], database__tlsCa={"configMap": "a", "secret": "b", "key": "ca.crt"})
    with pytest.raises(Exception, match="not both"):
        render(chart, values)


def test_fairness_limits_are_rendered_and_zero_is_refused(chart):
    limits = {"maxConnections": 2000, "handshakeTimeoutMs": 3000, "createsPerSecond": 1}
    config = config_toml(render(chart, {"config": {"limits": limits}}))
    assert config["limits"]["max_connections"] == 2000
    assert config["limits"]["handshake_timeout_ms"] == 3000
    assert config["limits"]["creates_per_second"] == 1
    assert config["limits"]["failed_verifies_burst"] == 100, "unset keys keep their defaults"
    with pytest.raises(helm.HelmValuesError, match="maxConnections"):
        render(chart, {"config": {"limits": {"maxConnections": 0}}})


def test_argon2_pools_are_rendered_and_zero_is_refused(chart):
    """The gate's verify pool and CreateToken's own (issue 11: creates never queue ahead of
    the gate) are sized from the chart; unset verify sizes follow the container's CPUs."""
    verify = {"workers": 4, "queue": 512, "createWorkers": 2, "createQueue": 8}
    config = config_toml(render(chart, {"config": {"verify": verify}}))
    assert config["verify"] == {"workers": 4, "queue": 512, "create_workers": 2, "create_queue": 8}
    config = config_toml(render(chart, {"config": {"verify": {"createQueue": 64}}}))
    assert config["verify"] == {"create_workers": 1, "create_queue": 64}
    for key in verify:
        with pytest.raises(helm.HelmValuesError, match=key):
            render(chart, {"config": {"verify": {key: 0}}})


def test_overload_limits_are_rendered_and_zero_is_refused(chart):
    """Admission, the decision deadline, HTTP/2 and the admin port's limits: a deployment
    behind a gateway with a shorter ext_authz timeout must be able to lower the deadline."""
    limits = {"maxInFlight": 512, "decisionDeadlineMs": 80, "maxConcurrentStreams": 64,
              "maxHeaderListBytes": 8192, "sideMaxConnections": 16, "sideIdleTimeoutMs": 5000,
              "serviceFailedVerifiesBurst": 5000, "serviceFailedVerifiesPerSecond": 500,
              "maxPendingAcceptResetStreams": 1024}
    config = config_toml(render(chart, {"config": {"limits": limits}}))["limits"]
    assert {k: config[k] for k in ("max_in_flight", "decision_deadline_ms", "max_concurrent_streams",
                                   "max_header_list_bytes", "side_max_connections",
                                   "side_idle_timeout_ms", "service_failed_verifies_burst",
                                   "service_failed_verifies_per_second",
                                   "max_pending_accept_reset_streams")} == {
        "max_in_flight": 512, "decision_deadline_ms": 80, "max_concurrent_streams": 64,
        "max_header_list_bytes": 8192, "side_max_connections": 16, "side_idle_timeout_ms": 5000,
        "service_failed_verifies_burst": 5000, "service_failed_verifies_per_second": 500,
        "max_pending_accept_reset_streams": 1024,
    }
    for key in limits:
        with pytest.raises(helm.HelmValuesError, match=key):
            render(chart, {"config": {"limits": {key: 0}}})
