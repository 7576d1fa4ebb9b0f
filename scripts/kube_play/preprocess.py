"""Turns Kubernetes manifests into what `podman kube play` (4.3) can run, as a stand-in for the
cluster's own behaviour, and nothing more:

* Secrets become ConfigMaps of the same name and data, and every reference to them (volumes,
  `secretKeyRef`, `envFrom.secretRef`) refers to the ConfigMap: podman 4.3 mishandles Secrets
  (containers/podman#16269).
* A StatefulSet becomes a Deployment with the same pod template, and each of its
  `volumeClaimTemplates` a PersistentVolumeClaim named as the StatefulSet controller names the
  first pod's (`<claim>-<statefulset>-0`): podman plays no StatefulSets. (Every StatefulSet here
  has one replica.)
* Pods with init containers (and their Deployments) are annotated to keep them (`io.podman.annotations.init.container.type:
  always`): podman 4.3 removes a finished "once" init container in a race with its exit and
  then fails the whole pod ("cannot remove container … as it is running"). They still run to
  completion before the pod's containers start, as in a cluster.
* Each pod's `emptyDir` volumes are renamed `<workload>-empty-dir-<name>`: podman 4.3 makes an
  `emptyDir` a named volume, so pods naming theirs alike (`key`, `tmp`) would share one, which
  in a cluster each has to itself.
* Container ports are not declared: podman 4.3 publishes each declared `containerPort` on the
  host (a cluster does not), so two pods serving the same port collide. On the pods' network
  every container is reached on its ports all the same.
* Services are not played (podman ignores them); instead each pod gets, as network aliases,
  the names of the Services that select it (`name`, `name.namespace.svc` and
  `name.namespace.svc.cluster.local`), which is what cluster DNS would answer for them.

Pure functions over parsed YAML documents; `test_preprocess.py` tests them.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field

# Kinds this stand-in runs; anything else in the input is refused by name, so nothing is
# silently dropped.
INIT_TYPE_ANNOTATION = "io.podman.annotations.init.container.type"
RUNNABLE = {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "PersistentVolumeClaim"}


class PreprocessError(ValueError):
    pass


@dataclass
class Workload:
    """One pod's objects, played together on the network with `aliases`."""

    name: str
    documents: list[dict] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def secret_to_config_map(secret: dict) -> dict:
    """The ConfigMap standing in for `secret`: `data` decoded (it must be text), `stringData`
    merged over it, as the API server would."""
    meta = secret.get("metadata", {})
    data = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            raise PreprocessError(
                f"Secret {meta.get('name')}: key {key} is not base64 of UTF-8 text ({e})"
            ) from e
    data.update(secret.get("stringData") or {})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "labels")},
        "data": data,
    }


def _secret_refs_to_config_maps(pod_spec: dict) -> None:
    for volume in pod_spec.get("volumes") or []:
        secret = volume.pop("secret", None)
        if secret is not None:
            config_map = {"name": secret["secretName"]}
            for key in ("items", "defaultMode", "optional"):
                if key in secret:
                    config_map[key] = secret[key]
            volume["configMap"] = config_map
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "secret" in source:
                source["configMap"] = source.pop("secret")
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        for var in container.get("env") or []:
            value_from = var.get("valueFrom") or {}
            if "secretKeyRef" in value_from:
                value_from["configMapKeyRef"] = value_from.pop("secretKeyRef")
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                source["configMapRef"] = source.pop("secretRef")


def statefulset_to_deployment(statefulset: dict) -> tuple[dict, list[dict]]:
    """The Deployment and PersistentVolumeClaims standing in for a one-replica StatefulSet."""
    meta = statefulset["metadata"]
    spec = statefulset["spec"]
    if spec.get("replicas", 1) != 1:
        raise PreprocessError(
            f"StatefulSet {meta['name']}: {spec.get('replicas')} replicas; this stand-in runs one"
        )
    template = copy.deepcopy(spec["template"])
    claims = []
    volumes = template["spec"].setdefault("volumes", [])
    for claim in spec.get("volumeClaimTemplates") or []:
        claim_name = f"{claim['metadata']['name']}-{meta['name']}-0"
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim_name},
                "spec": claim["spec"],
            }
        )
        volumes.append(
            {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
        )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "labels", "annotations")},
        "spec": {"replicas": 1, "selector": spec["selector"], "template": template},
    }
    return deployment, claims


def _own_empty_dirs(workload: str, pod_spec: dict) -> None:
    renamed = {}
    for volume in pod_spec.get("volumes") or []:
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{workload}-empty-dir-{volume['name']}"
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        for mount in container.get("volumeMounts") or []:
            mount["name"] = renamed.get(mount["name"], mount["name"])


def empty_dir_volumes(workload: Workload) -> list[str]:
    """The names podman gives the workload's emptyDir volumes (to remove them after)."""
    pod_spec = workload.documents[-1]["spec"]["template"]["spec"]
    return [v["name"] for v in pod_spec.get("volumes") or [] if "emptyDir" in v]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _volume_sources(pod_spec: dict) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and claims a pod mounts or reads."""
    config_maps, claims = set(), set()
    for volume in pod_spec.get("volumes") or []:
        if "configMap" in volume:
            config_maps.add(volume["configMap"]["name"])
        if "persistentVolumeClaim" in volume:
            claims.add(volume["persistentVolumeClaim"]["claimName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                config_maps.add(source["configMap"]["name"])
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                config_maps.add(ref["name"])
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                config_maps.add(source["configMapRef"]["name"])
    return config_maps, claims


def for_podman(documents: list[dict], namespace: str) -> list[Workload]:
    """One `Workload` per Deployment or StatefulSet in `documents`, each with the ConfigMaps
    (former Secrets included) and claims its pod uses and the aliases of its Services."""
    config_maps: dict[str, dict] = {}
    claims: dict[str, dict] = {}
    services: list[dict] = []
    deployments: list[dict] = []
    for doc in documents:
        if not doc:
            continue
        kind = doc.get("kind")
        if kind not in RUNNABLE:
            raise PreprocessError(
                f"{kind} {doc.get('metadata', {}).get('name')}: not something this stand-in runs"
            )
        if kind == "Secret":
            config_maps[doc["metadata"]["name"]] = secret_to_config_map(doc)
        elif kind == "ConfigMap":
            config_maps[doc["metadata"]["name"]] = doc
        elif kind == "PersistentVolumeClaim":
            claims[doc["metadata"]["name"]] = doc
        elif kind == "Service":
            services.append(doc)
        elif kind == "StatefulSet":
            deployment, templates = statefulset_to_deployment(doc)
            deployments.append(deployment)
            for claim in templates:
                claims[claim["metadata"]["name"]] = claim
        else:
            deployments.append(copy.deepcopy(doc))
    workloads = []
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        _secret_refs_to_config_maps(pod["spec"])
        _own_empty_dirs(deployment["metadata"]["name"], pod["spec"])
        for container in pod["spec"].get("containers") or []:
            container.pop("ports", None)
        if pod["spec"].get("initContainers"):
            # podman reads a Deployment's pod annotations from the Deployment itself.
            for meta in (deployment["metadata"], pod.setdefault("metadata", {})):
                meta.setdefault("annotations", {})[INIT_TYPE_ANNOTATION] = "always"
        used_maps, used_claims = _volume_sources(pod["spec"])
        missing = sorted((used_maps - config_maps.keys()) | (used_claims - claims.keys()))
        if missing:
            raise PreprocessError(
                f"Deployment {deployment['metadata']['name']} uses {', '.join(missing)}, "
                "which the manifests do not define"
            )
        labels = pod.get("metadata", {}).get("labels") or {}
        aliases = []
        for service in services:
            if _selects(service.get("spec", {}).get("selector") or {}, labels):
                name = service["metadata"]["name"]
                aliases += [name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
        workloads.append(
            Workload(
                name=deployment["metadata"]["name"],
                documents=[config_maps[n] for n in sorted(used_maps)]
                + [claims[n] for n in sorted(used_claims)]
                + [deployment],
                aliases=aliases,
            )
        )
    return workloads
