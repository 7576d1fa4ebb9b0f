#!/usr/bin/env python3
"""Offline checks of the Helm chart charts/neuroshard (no cluster, no helm binary).

    scripts/chart-check.py [--update]
        1. charts/neuroshard/crds/neuroshardnode.yaml is byte-identical to crds/neuroshardnode.yaml;
        2. `helm lint --strict` (Kubernetes 1.34) with the default values and with
           deploy/examples/values-gpu.yaml;
        3. renders both and validates every object strictly against Kubernetes 1.34's schemas
           (kubernetes-validate), NeuroShardNodes against the CRD's own schema (unknown fields
           refused); cert-manager Certificates and ServiceMonitors are skipped (no schema here);
           every pod runs as non-root with a read-only root, no privilege escalation, all
           capabilities dropped, RuntimeDefault seccomp and resource requests; every
           NEUROSHARD_<SERVICE>_* variable names a field of the service's config (read from the
           Rust sources: the services refuse unknown keys);
        4. compares the renders, generated material (data of Secrets annotated
           neuroshard.io/generated) replaced by a placeholder, with the goldens
           charts/neuroshard/tests/golden/{default,gpu}.yaml (--update rewrites them);
        5. refuses values that break values.schema.json with a message naming the field, and
           renders and validates the other paths (existing TLS Secret and external database,
           cert-manager, plaintext, everything optional switched on).

    scripts/chart-check.py render --values FILE... [--set k=v]... [--namespace NS] [--name NAME]
        Prints the rendered manifests to stdout (no CRDs unless --include-crds).

Runs in the environment scripts/setup-chart-tools.sh makes (it re-executes itself there).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "neuroshard"
GOLDEN = CHART / "tests" / "golden"
GPU_VALUES = ROOT / "deploy" / "examples" / "values-gpu.yaml"
KUBE_VERSION = "1.34.0"
RELEASE = "neuroshard"
NAMESPACE = "neuroshard"
GENERATED = "neuroshard.io/generated"
PLACEHOLDER = "<generated>"
# Kinds of CRDs this check has no schema for.
SKIPPED_KINDS = {"Certificate", "ServiceMonitor"}


def ensure_tools() -> None:
    """Re-executes in the chart tools environment unless its modules import here."""
    try:
        import helm_python  # noqa: F401
        import kubernetes_validate  # noqa: F401
        import yaml  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("NEUROSHARD_CHART_TOOLS_REEXEC"):
        sys.exit("chart-check: the chart tools environment lacks helm_python or kubernetes_validate")
    setup = ROOT / "scripts" / "setup-chart-tools.sh"
    env_dir = subprocess.run(
        ["bash", str(setup)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]
    python = Path(env_dir) / "bin" / "python"
    os.environ["NEUROSHARD_CHART_TOOLS_REEXEC"] = "1"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


ensure_tools()

import helm_python as helm  # noqa: E402
import jsonschema  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Values and rendering


def merge(base: dict, overlay: dict) -> dict:
    """Helm's merge of values files: maps deep-merged, anything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_values(files: list[str | Path], sets: list[str] = ()) -> dict:
    values: dict = {}
    for f in files:
        values = merge(values, helm.values_from_yaml(Path(f).read_text()) or {})
    for expression in sets:
        values = merge(values, helm.parse_set_string(expression))
    return values


def render(values: dict, namespace: str = NAMESPACE, name: str = RELEASE) -> list[tuple[str, dict]]:
    """(template path, object) for every object the chart renders, in template order."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=name, namespace=namespace)
    objects = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        for obj in yaml.safe_load_all(manifests[path]):
            if obj:
                objects.append((path, obj))
    return objects


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (config files in ConfigMaps) as literal blocks, readable in diffs."""


def _str(dumper, value):
    style = "|" if "\n" in value.rstrip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[tuple[str, dict]]) -> str:
    parts = []
    for path, obj in objects:
        text = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100)
        parts.append(f"---\n# Source: {path}\n{text}")
    return "".join(parts)


def normalised(objects: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Generated material (random keys, passwords, certificates) as a placeholder."""
    out = []
    for path, obj in objects:
        obj = copy.deepcopy(obj)
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if obj.get("kind") == "Secret" and annotations.get(GENERATED) == "true":
            for field in ("data", "stringData"):
                if obj.get(field):
                    obj[field] = {k: PLACEHOLDER for k in obj[field]}
        out.append((path, obj))
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def strict_crd_schema(schema: dict) -> dict:
    """The CRD's schema with unknown fields refused (the API server's strict field validation)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CHART / "crds" / "neuroshardnode.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = strict_crd_schema(version["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are the API server's.
    schema.setdefault("properties", {}).update(
        {"apiVersion": {"const": "neuroshard.io/v1alpha1"}, "kind": {"const": "NeuroShardNode"},
         "metadata": {"type": "object"}}
    )
    return jsonschema.Draft7Validator(schema)


POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# The services refuse unknown config keys: every NEUROSHARD_<SERVICE>_<KEY> the chart sets must
# name a field of the service's config struct (nested keys: a field of some config struct in
# its sources or the shared libraries).
CONFIG_STRUCTS = {
    "NEUROSHARD_REGISTRY_": ("services/layer-registry", "RegistryConfig"),
    "NEUROSHARD_AGGREGATOR_": ("services/diloco-aggregator", "AggregatorConfig"),
    "NEUROSHARD_LEDGER_": ("services/ledger", "LedgerConfig"),
    "NEUROSHARD_GATEWAY_": ("services/swarm-gateway", "GatewayConfig"),
    "NEUROSHARD_OPERATOR_": ("operator", "OperatorConfig"),
    "NEUROSHARD_WORKER_": ("services/shard-worker", "WorkerConfig"),
}
_config_fields: dict[str, tuple[set[str], set[str]]] = {}


def config_fields(prefix: str) -> tuple[set[str], set[str]] | None:
    """(fields of the service's config struct, fields of every struct it may nest)."""
    if prefix in _config_fields:
        return _config_fields[prefix]
    crate, struct = CONFIG_STRUCTS[prefix]
    config = ROOT / crate / "src" / "config.rs"
    if not config.exists():
        return None
    text = config.read_text()
    match = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
    if not match:
        return None
    field = re.compile(r"^\s*pub (r#)?([a-z_][a-z0-9_]*)\s*:", re.M)
    top = {m.group(2) for m in field.finditer(match.group(1))}
    nested: set[str] = set()
    for source in [*(ROOT / crate / "src").rglob("*.rs"), *(ROOT / "services" / "lib").rglob("*.rs")]:
        nested |= {m.group(2) for m in field.finditer(source.read_text())}
    _config_fields[prefix] = (top, nested)
    return top, nested


def check_config_keys(obj: dict) -> list[str]:
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    problems = []
    for c in obj["spec"]["template"]["spec"].get("containers", []):
        for env in c.get("env", []):
            prefix = next((p for p in CONFIG_STRUCTS if env["name"].startswith(p)), None)
            if prefix is None:
                continue
            fields = config_fields(prefix)
            if fields is None:
                continue
            path = env["name"][len(prefix):].lower().split("__")
            top, nested = fields
            if path[0] not in top or any(p not in nested for p in path[1:]):
                problems.append(f"{name}: {env['name']} names no config key of the service")
    return problems


def check_pod_policy(obj: dict) -> list[str]:
    """Security and resource rules every pod of the chart follows."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    spec = obj["spec"]["template"]["spec"]
    problems = []
    pod_sc = spec.get("securityContext") or {}
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        cname = f"{name} container {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cname}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cname}: capabilities do not drop ALL")
        if not (c.get("resources") or {}).get("requests"):
            problems.append(f"{cname}: no resource requests")
        for env in c.get("env", []):
            if env["name"] in ("NEUROSHARD_GATEWAY_API_KEYS",) and "valueFrom" not in env:
                problems.append(f"{cname}: {env['name']} is not read from a Secret")
    return problems


def validate(objects: list[tuple[str, dict]], label: str) -> dict:
    """Validates every object; returns counts. Raises Failure listing every problem."""
    nodes = crd_validator()
    problems: list[str] = []
    counts = {"validated": 0, "crd": 0, "skipped": 0}
    names = set()
    for path, obj in objects:
        kind = obj.get("kind")
        ident = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
        key = (obj.get("apiVersion"), kind, (obj.get("metadata") or {}).get("name"))
        if key in names:
            problems.append(f"{path}: {ident} is rendered twice")
        names.add(key)
        if kind == "NeuroShardNode":
            errors = sorted(nodes.iter_errors(obj), key=lambda e: list(e.path))
            for e in errors:
                where = "/".join(str(p) for p in e.path)
                problems.append(f"{path}: {ident}: {where}: {e.message}")
            counts["crd"] += 1
            continue
        if kind in SKIPPED_KINDS:
            counts["skipped"] += 1
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            counts["validated"] += 1
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            problems.append(f"{path}: {ident}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{path}: {ident}: {e.message}")
        if kind in POD_KINDS:
            problems.extend(f"{path}: {p}" for p in check_pod_policy(obj))
            problems.extend(f"{path}: {p}" for p in check_config_keys(obj))
    if problems:
        raise Failure(f"{label}: invalid objects:\n  " + "\n  ".join(problems))
    return counts


# ---------------------------------------------------------------------------------------------
# The checks


def check_crd() -> str:
    ours = (CHART / "crds" / "neuroshardnode.yaml").read_bytes()
    repo = (ROOT / "crds" / "neuroshardnode.yaml").read_bytes()
    if ours != repo:
        raise Failure(
            "charts/neuroshard/crds/neuroshardnode.yaml differs from crds/neuroshardnode.yaml: "
            "cp crds/neuroshardnode.yaml charts/neuroshard/crds/"
        )
    crd = yaml.safe_load(ours)
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
    return "CRD identical to crds/ and valid"


def check_lint(label: str, values: dict | None) -> str:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if bad or report.get("errors"):
        lines = [f"[{m['severity']}] {m['path']}: {m['error'].strip()}" for m in bad]
        lines += [e.strip() for e in report.get("errors", []) if not any(e.strip() in l for l in lines)]
        raise Failure(f"lint ({label}):\n  " + "\n  ".join(lines))
    infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) < 2]
    return f"lint --strict ({label}): ok" + (f" (info: {'; '.join(infos)})" if infos else "")


def check_golden(label: str, objects, update: bool) -> str:
    golden = GOLDEN / f"{label}.yaml"
    text = (
        f"# Rendered by scripts/chart-check.py ({label} values, release {RELEASE}, namespace "
        f"{NAMESPACE}); generated\n# Secret data is {PLACEHOLDER}. Update: scripts/chart-check.py --update\n"
        + dump(normalised(objects))
    )
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        return f"golden {golden.relative_to(ROOT)}: written"
    if not golden.exists():
        raise Failure(f"golden {golden.relative_to(ROOT)} is missing: scripts/chart-check.py --update")
    expected = golden.read_text()
    if expected != text:
        diff = list(difflib.unified_diff(
            expected.splitlines(), text.splitlines(), str(golden.relative_to(ROOT)), "render", lineterm=""
        ))
        shown = "\n".join(diff[:80]) + (f"\n... {len(diff) - 80} more lines" if len(diff) > 80 else "")
        raise Failure(
            f"the {label} render drifted from {golden.relative_to(ROOT)} "
            f"(if intended: scripts/chart-check.py --update):\n{shown}"
        )
    return f"golden {golden.relative_to(ROOT)}: matches"


def check_schema_refusal() -> str:
    """Misspelt and mistyped values are refused, by name, by both lint and render."""
    bad = {"registry": {"replcas": 2}, "gateway": {"replicas": "two"}}
    wanted = ["/registry", "replcas", "/gateway/replicas"]
    try:
        render(bad)
    except helm.HelmValuesError as e:
        message = str(e)
    else:
        raise Failure("values breaking values.schema.json rendered without complaint")
    missing = [w for w in wanted if w not in message]
    if missing:
        raise Failure(f"the schema error does not name {missing}: {message}")
    report = helm.lint(CHART, bad, strict=True, kube_version=f"v{KUBE_VERSION}")
    lint_text = " ".join(m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 3)
    if "replcas" not in lint_text or "/gateway/replicas" not in lint_text:
        raise Failure(f"lint does not refuse the misspelt and mistyped values by name: {report}")
    return "schema: a misspelt key and a string for a number are refused, naming the fields"


def env_of(objects, kind: str, name: str, container: str) -> dict:
    for _, obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            for c in obj["spec"]["template"]["spec"]["containers"]:
                if c["name"] == container:
                    return {e["name"]: e for e in c.get("env", [])}
    raise Failure(f"{kind}/{name} has no container {container}")


def kinds_named(objects) -> set[tuple[str, str]]:
    return {(obj["kind"], obj["metadata"]["name"]) for _, obj in objects}


def expect_refused(objects, label: str, name: str) -> None:
    """`validate` must refuse `objects`, naming `name`."""
    try:
        validate(objects, label)
    except Failure as e:
        if name not in str(e):
            raise Failure(f"{label}: refused without naming {name}: {e}") from e
    else:
        raise Failure(f"{label}: passed validation; {name} should have been refused")


def check_variants() -> list[str]:
    results = []

    # An existing TLS Secret and an external database: the chart makes neither.
    values = {
        "tls": {"mode": "existingSecret", "existingSecret": "my-tls"},
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "neuroshard-db"},
    }
    objects = render(values)
    counts = validate(objects, "existingSecret+externalDatabase")
    made = kinds_named(objects)
    for unwanted in [("Secret", "neuroshard-tls"), ("StatefulSet", "postgresql"), ("Secret", "neuroshard-postgresql")]:
        if unwanted in made:
            raise Failure(f"existingSecret+externalDatabase: the chart still makes {unwanted[0]}/{unwanted[1]}")
    env = env_of(objects, "Deployment", "ledger", "ledger")
    ref = env["NEUROSHARD_LEDGER_DATABASE_URL"].get("valueFrom", {}).get("secretKeyRef", {})
    if ref != {"name": "neuroshard-db", "key": "ledger"}:
        raise Failure(f"external database: the ledger's DATABASE_URL is not from the Secret: {env['NEUROSHARD_LEDGER_DATABASE_URL']}")
    op = env_of(objects, "Deployment", "neuroshard-operator", "neuroshard-operator")
    if op["NEUROSHARD_OPERATOR_WORKER_TLS_SECRET"]["value"] != '"my-tls"':
        raise Failure("existingSecret: the operator does not hand workers the existing TLS Secret")
    results.append(f"existingSecret TLS + external database: {counts['validated']} objects valid")

    # cert-manager.
    objects = render({"tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "ca-issuer"}}}})
    counts = validate(objects, "certManager")
    if ("Certificate", "neuroshard-tls") not in kinds_named(objects):
        raise Failure("certManager: no Certificate neuroshard-tls")
    results.append(f"cert-manager TLS: {counts['validated']} objects valid, {counts['skipped']} skipped (Certificate)")

    # Plaintext with the operator: refused by name (the operator speaks mutual TLS only).
    try:
        render({"tls": {"enabled": False}})
    except Exception as e:  # the SDK's render error for a template's `fail`
        if "tls.enabled=false needs operator.enabled=false" not in str(e):
            raise Failure(f"plaintext with the operator: an unclear refusal: {e}") from e
    else:
        raise Failure("plaintext with the operator rendered; the operator cannot run that way")
    results.append("plaintext with the operator: refused, naming tls.enabled and operator.enabled")

    # Plaintext (tests only, without the operator): no TLS Secret, http:// everywhere.
    objects = render({"tls": {"enabled": False}, "operator": {"enabled": False}})
    counts = validate(objects, "plaintext")
    env = env_of(objects, "Deployment", "swarm-gateway", "swarm-gateway")
    if env["NEUROSHARD_GATEWAY_REGISTRY"]["value"] != "http://layer-registry:7400" or \
            env.get("NEUROSHARD_GATEWAY_TLS__INSECURE_PLAINTEXT", {}).get("value") != "true":
        raise Failure("tls.enabled false: the gateway is not configured for plaintext")
    if any(k == "Secret" and n == "neuroshard-tls" for k, n in kinds_named(objects)):
        raise Failure("tls.enabled false: a TLS Secret is still made")
    results.append(f"plaintext: {counts['validated']} objects valid")

    # Everything optional switched on.
    values = {
        "imagePullSecrets": ["regcred"],
        "gateway": {
            "apiKeys": {"keys": [{"key": "sk-0123456789abcdef0123", "account": "0123456789abcdef0123456789abcdef01234567"}]},
            "tokenizer": {"content": '{"version": "1.0"}'},
            "billing": {"enabled": True},
            "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "gw-tls"},
            "service": {"type": "LoadBalancer"},
        },
        "registry": {"replicas": 2, "database": {"sslmode": "verify-full", "rootCertSecret": "pg-ca"},
                     "operators": ["0123456789abcdef0123456789abcdef01234567"],
                     "admission": "allow_list", "allowedNodes": ["0123456789abcdef0123456789abcdef01234567"],
                     "extraEnv": [{"name": "NEUROSHARD_REGISTRY_WATCH_POLL_MS", "value": "500"}]},
        "operator": {"replicas": 2, "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]},
        "serviceMonitors": {"enabled": True},
        "networkPolicies": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "otel": {"enabled": True, "endpoint": "http://collector.observability:4317"},
        "nodes": [{"name": "cpu-0", "memory": "4Gi"}],
    }
    objects = render(values)
    counts = validate(objects, "everything on")
    made = kinds_named(objects)
    for wanted in [("Ingress", "swarm-gateway"), ("ServiceMonitor", "layer-registry"),
                   ("ConfigMap", "neuroshard-tokenizer"), ("NeuroShardNode", "cpu-0")]:
        if wanted not in made:
            raise Failure(f"everything on: no {wanted[0]}/{wanted[1]}")
    if ("Deployment", "otel-collector") in made:
        raise Failure("otel.endpoint set: the bundled collector is still made")
    results.append(
        f"everything optional on: {counts['validated']} objects valid, {counts['crd']} NeuroShardNode "
        f"checked against the CRD, {counts['skipped']} skipped (ServiceMonitor)"
    )

    # A NeuroShardNode with a misspelt field is refused by the CRD check.
    objects = render({"nodes": [{"name": "cpu-0", "memory": "4Gi"}]})
    for _, obj in objects:
        if obj["kind"] == "NeuroShardNode":
            obj["spec"]["memroy"] = "4Gi"
    expect_refused(objects, "misspelt node", "memroy")
    results.append("a NeuroShardNode with an unknown spec field is refused by the CRD check")

    # An environment variable naming no config key (the service would refuse to start).
    objects = render({"registry": {"extraEnv": [{"name": "NEUROSHARD_REGISTRY_WATCH_POL_MS", "value": "5"}]}})
    expect_refused(objects, "misspelt config key", "NEUROSHARD_REGISTRY_WATCH_POL_MS")
    results.append("an environment variable naming no config key is refused")
    return results


def run_checks(update: bool) -> int:
    started = time.monotonic()
    lines: list[str] = []
    failures: list[str] = []

    def step(fn, *args):
        try:
            result = fn(*args)
            lines.extend(result if isinstance(result, list) else [result])
        except Failure as e:
            failures.append(str(e))
        except helm.HelmError as e:
            failures.append(f"{fn.__name__}: {type(e).__name__}: {e}")

    step(check_crd)
    gpu = load_values([GPU_VALUES])
    step(check_lint, "default", None)
    step(check_lint, "gpu", gpu)
    for label, values in (("default", {}), ("gpu", gpu)):
        def rendered(label=label, values=values):
            objects = render(values)
            counts = validate(objects, label)
            out = [
                f"render ({label}): {len(objects)} objects; {counts['validated']} valid against Kubernetes "
                f"{KUBE_VERSION} (strict), {counts['crd']} NeuroShardNode against the CRD, "
                f"{counts['skipped']} skipped (Certificate/ServiceMonitor: no schema here)"
            ]
            out.append(check_golden(label, objects, update))
            return out
        rendered.__name__ = f"render_{label}"
        step(rendered)
    step(check_schema_refusal)
    step(check_variants)

    for line in lines:
        print(f"ok   {line}")
    for failure in failures:
        print(f"FAIL {failure}")
    elapsed = time.monotonic() - started
    print(f"chart-check: {'FAILED' if failures else 'passed'} ({len(lines)} ok, {len(failures)} failed) in {elapsed:.1f}s")
    return 1 if failures else 0


def run_render(args) -> int:
    values = load_values(args.values, args.set)
    with helm.Chart.load(CHART) as chart:
        try:
            manifests = chart.render(values, name=args.name, namespace=args.namespace)
        except helm.HelmError as e:
            print(f"chart-check render: {e}", file=sys.stderr)
            return 1
        out = []
        if args.include_crds:
            for crd in chart.crds:
                out.append(f"---\n# Source: {crd['filename']}\n{crd['data'].rstrip()}\n")
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        text = manifests[path].strip()
        for doc in (d.strip() for d in text.split("\n---")):
            doc = doc.removeprefix("---").strip()
            if doc and yaml.safe_load(doc):
                out.append(f"---\n# Source: {path}\n{doc}\n")
    sys.stdout.write("".join(out))
    return 0


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "render":
        parser = argparse.ArgumentParser(prog="chart-check.py render", description="Render the chart to stdout.")
        parser.add_argument("--values", "-f", action="extend", nargs="+", default=[], help="values files, in order")
        parser.add_argument("--set", action="append", default=[], help="helm --set expressions")
        parser.add_argument("--namespace", "-n", default=NAMESPACE)
        parser.add_argument("--name", default=RELEASE, help="release name")
        parser.add_argument("--include-crds", action="store_true")
        return run_render(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="chart-check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the goldens from the renders")
    return run_checks(parser.parse_args(argv).update)


if __name__ == "__main__":
    sys.exit(main())
