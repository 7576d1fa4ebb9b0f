"""Tests of the `podman kube play` stand-in's preprocessing (python3 -m unittest)."""

import base64
import unittest

from preprocess import (
    PreprocessError,
    empty_dir_volumes,
    for_podman,
    secret_to_config_map,
    statefulset_to_deployment,
)


def pod(labels, volumes=(), env=()):
    return {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{"name": "c", "image": "i", "env": list(env)}],
            "volumes": list(volumes),
        },
    }


def deployment(name, template):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": template["metadata"]["labels"]}, "template": template},
    }


SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "keys", "namespace": "ns", "annotations": {"a": "b"}},
    "data": {"node.key": base64.b64encode(b"00ff").decode()},
    "stringData": {"url": "host=postgresql"},
}


class SecretsBecomeConfigMaps(unittest.TestCase):
    def test_data_is_decoded_and_string_data_kept(self):
        config_map = secret_to_config_map(SECRET)
        self.assertEqual(config_map["kind"], "ConfigMap")
        self.assertEqual(config_map["metadata"], {"name": "keys", "namespace": "ns"})
        self.assertEqual(config_map["data"], {"node.key": "00ff", "url": "host=postgresql"})

    def test_binary_data_is_refused_by_key(self):
        bad = dict(SECRET, data={"blob": base64.b64encode(b"\xff\xfe").decode()})
        with self.assertRaisesRegex(PreprocessError, "keys: key blob"):
            secret_to_config_map(bad)

    def test_references_follow(self):
        template = pod(
            {"app": "a"},
            volumes=[{"name": "k", "secret": {"secretName": "keys", "defaultMode": 0o440}}],
            env=[{"name": "URL", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "url"}}}],
        )
        (workload,) = for_podman([SECRET, deployment("a", template)], "ns")
        played = workload.documents[-1]["spec"]["template"]["spec"]
        self.assertEqual(played["volumes"][0], {"name": "k", "configMap": {"name": "keys", "defaultMode": 0o440}})
        self.assertEqual(
            played["containers"][0]["env"][0]["valueFrom"], {"configMapKeyRef": {"name": "keys", "key": "url"}}
        )
        self.assertEqual(workload.documents[0]["kind"], "ConfigMap")


class InitContainers(unittest.TestCase):
    def test_pods_with_init_containers_keep_them(self):
        with_init = pod({"app": "a"})
        with_init["spec"]["initContainers"] = [{"name": "install-key", "image": "i"}]
        workloads = for_podman([deployment("a", with_init), deployment("b", pod({"app": "b"}))], "ns")
        annotations = [w.documents[-1]["spec"]["template"]["metadata"].get("annotations", {}) for w in workloads]
        self.assertEqual(annotations[0], {"io.podman.annotations.init.container.type": "always"})
        self.assertEqual(annotations[1], {})
        self.assertEqual(workloads[0].documents[-1]["metadata"]["annotations"], annotations[0])


class EmptyDirs(unittest.TestCase):
    def test_each_pod_has_its_own(self):
        def with_key(labels):
            template = pod(labels, volumes=[{"name": "key", "emptyDir": {"medium": "Memory"}}])
            template["spec"]["containers"][0]["volumeMounts"] = [{"name": "key", "mountPath": "/k"}]
            template["spec"]["initContainers"] = [
                {"name": "install-key", "image": "i", "volumeMounts": [{"name": "key", "mountPath": "/k"}]}
            ]
            return template

        workloads = for_podman([deployment("cpu-0", with_key({"n": "0"})), deployment("cpu-1", with_key({"n": "1"}))], "ns")
        for workload, name in zip(workloads, ["cpu-0-empty-dir-key", "cpu-1-empty-dir-key"]):
            spec = workload.documents[-1]["spec"]["template"]["spec"]
            self.assertEqual(spec["volumes"][0]["name"], name)
            self.assertEqual(spec["containers"][0]["volumeMounts"][0]["name"], name)
            self.assertEqual(spec["initContainers"][0]["volumeMounts"][0]["name"], name)
            self.assertEqual(empty_dir_volumes(workload), [name])


class Ports(unittest.TestCase):
    def test_container_ports_are_not_published(self):
        template = pod({"app": "w"})
        template["spec"]["containers"][0]["ports"] = [{"name": "grpc", "containerPort": 7500}]
        (workload,) = for_podman([deployment("w", template)], "ns")
        self.assertNotIn("ports", workload.documents[-1]["spec"]["template"]["spec"]["containers"][0])
        # The input is left as it was.
        self.assertIn("ports", template["spec"]["containers"][0])


class StatefulSets(unittest.TestCase):
    def statefulset(self, replicas=1):
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "cpu-0", "labels": {"x": "y"}, "ownerReferences": [{"uid": "u"}]},
            "spec": {
                "replicas": replicas,
                "serviceName": "cpu-0",
                "selector": {"matchLabels": {"app": "w"}},
                "template": pod({"app": "w"}),
                "volumeClaimTemplates": [
                    {"metadata": {"name": "checkpoints"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
                ],
            },
        }

    def test_one_replica_becomes_a_deployment_with_its_claim(self):
        deployment_, claims = statefulset_to_deployment(self.statefulset())
        self.assertEqual(deployment_["kind"], "Deployment")
        self.assertNotIn("ownerReferences", deployment_["metadata"])
        self.assertEqual(claims[0]["metadata"]["name"], "checkpoints-cpu-0-0")
        self.assertIn(
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "checkpoints-cpu-0-0"}},
            deployment_["spec"]["template"]["spec"]["volumes"],
        )

    def test_more_replicas_are_refused(self):
        with self.assertRaisesRegex(PreprocessError, "cpu-0: 3 replicas"):
            statefulset_to_deployment(self.statefulset(3))


class ServicesBecomeAliases(unittest.TestCase):
    def test_selected_pods_get_the_service_names(self):
        service = {"kind": "Service", "metadata": {"name": "layer-registry"}, "spec": {"selector": {"app": "r"}}}
        other = {"kind": "Service", "metadata": {"name": "other"}, "spec": {"selector": {"app": "o"}}}
        workloads = for_podman([service, other, deployment("r", pod({"app": "r", "tier": "x"}))], "swarm")
        self.assertEqual(
            workloads[0].aliases,
            ["layer-registry", "layer-registry.swarm.svc", "layer-registry.swarm.svc.cluster.local"],
        )

    def test_a_service_without_selector_selects_nothing(self):
        service = {"kind": "Service", "metadata": {"name": "ext"}, "spec": {}}
        (workload,) = for_podman([service, deployment("r", pod({"app": "r"}))], "ns")
        self.assertEqual(workload.aliases, [])


class Refusals(unittest.TestCase):
    def test_unknown_kinds_are_named(self):
        with self.assertRaisesRegex(PreprocessError, "NetworkPolicy workers"):
            for_podman([{"kind": "NetworkPolicy", "metadata": {"name": "workers"}}], "ns")

    def test_a_missing_config_map_is_named(self):
        template = pod({"app": "a"}, volumes=[{"name": "t", "configMap": {"name": "tokenizer"}}])
        with self.assertRaisesRegex(PreprocessError, "a uses tokenizer"):
            for_podman([deployment("a", template)], "ns")


if __name__ == "__main__":
    unittest.main()
