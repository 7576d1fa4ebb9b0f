"""`make kube-play`: the chart's control plane and two operator-made CPU nodes, run as
containers of the images `make images` built, with `podman kube play`, driven as a user would.

1. Render the chart (scripts/chart-check.py render) with charts/neuroshard/ci/kube-play-values.yaml
   and keep its control plane: PostgreSQL, layer-registry, diloco-aggregator, ledger and
   swarm-gateway, with the Secrets, ConfigMaps and claims they use. (The operator needs a
   Kubernetes API, which this machine has none of; its tests run it against a stand-in.)
2. Render two CPU NeuroShardNodes with the operator's own code, in its image:
   `neuroshard-operator render --config … -`.
3. Preprocess both for podman 4.3 (preprocess.py: Secrets as ConfigMaps, StatefulSets as
   Deployments, Services as network aliases) and play each workload on one network.
4. Check every container runs as uid 10001 and answers its health check; wait until the
   registry has assigned both nodes spans and the gateway is ready; stream a completion;
   stream it again and kill (and remove) the worker container serving it mid-stream: the
   gateway fails over to the other node and the text is the same.

Exit status 0 when every check passed. Containers and the network are removed at the end
(KEEP=1 leaves them up for a look).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from preprocess import empty_dir_volumes, for_podman

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "neuroshard"
NETWORK = "neuroshard-kube-play"
API_KEY = "sk-kube-play-0123456789abcdef"
CONTROL_PLANE = ["postgresql", "layer-registry", "diloco-aggregator", "ledger", "swarm-gateway"]
NODES = ["cpu-0", "cpu-1"]
# Plaintext gRPC health ports (the kubelet's probes use them).
HEALTH_PORTS = {"layer-registry": 7401, "diloco-aggregator": 7601, "ledger": 7701, "shard-worker": 7501}


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}… failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def podman(*args: str, stdin: str | None = None, check: bool = True) -> str:
    return run("podman", *args, stdin=stdin, check=check)


class Check:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok


def render_chart(values: Path, image_prefix: str, tag: str) -> list[dict]:
    text = run(
        sys.executable, str(ROOT / "scripts/chart-check.py"), "render", "--namespace", NAMESPACE,
        "--values", str(values),
        "--set", f"image.registry={image_prefix}", "--set", f"image.tag={tag}",
    )
    return [d for d in yaml.safe_load_all(text) if d]


def control_plane(documents: list[dict]) -> list[dict]:
    """The control plane's workloads and the objects they may use; the rest (the operator,
    RBAC, NetworkPolicies, PodDisruptionBudgets, the CRD's objects) is not played."""
    kept = []
    for doc in documents:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("ConfigMap", "Secret", "PersistentVolumeClaim"):
            kept.append(doc)
        elif kind in ("Deployment", "StatefulSet", "Service") and name in CONTROL_PLANE:
            kept.append(doc)
    return kept


def render_nodes(image_prefix: str, tag: str, work: Path) -> list[dict]:
    nodes = [
        {
            "apiVersion": "neuroshard.io/v1alpha1",
            "kind": "NeuroShardNode",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"role": "auto", "memory": "2Gi", "storage": {"size": "1Gi"}},
        }
        for name in NODES
    ]
    config = work / "operator.toml"
    config.write_text(
        "\n".join(
            [
                f'worker_image = "{image_prefix}/shard-worker:{tag}"',
                'registry = "https://layer-registry:7400"',
                'aggregators = ["https://diloco-aggregator:7600"]',
                f'network_id = "{NAMESPACE}"',
                'worker_tls_secret = "neuroshard-tls"',
                "drain_timeout_s = 60",
                "leader_election = false",
                "",
            ]
        )
    )
    os.chmod(config, 0o644)
    text = podman(
        "run", "--rm", "-i", "--network", "none", "-v", f"{config}:/etc/neuroshard/operator.toml:ro",
        f"{image_prefix}/neuroshard-operator:{tag}", "render", "--config", "/etc/neuroshard/operator.toml", "-",
        stdin=yaml.safe_dump_all(nodes),
    )
    return [d for d in yaml.safe_load_all(text) if d]


def tokenizer_config_map(work: Path) -> dict:
    corpus = Path(os.environ["NEUROSHARD_CORPUS"])
    texts = sorted(corpus.glob("*.txt"))[:4]
    out = work / "data"
    run(str(ROOT / "target/release/neuroshard"), "data", "build", "--input", *map(str, texts), "--out", str(out))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "neuroshard-tokenizer", "namespace": NAMESPACE},
        "data": {"tokenizer.json": (out / "tokenizer.json").read_text()},
    }


def clean_up(workloads) -> None:
    """Removes what an earlier run (or this one) left: pods, the volumes podman made for
    their claims and ConfigMaps (which `kube down` keeps, and a later play would reuse with
    their old contents), the network."""
    for workload in workloads:
        podman("pod", "rm", "-f", f"{workload.name}-pod-0", check=False)
    for workload in workloads:
        for doc in workload.documents:
            if doc["kind"] in ("PersistentVolumeClaim", "ConfigMap"):
                podman("volume", "rm", "-f", doc["metadata"]["name"], check=False)
        for volume in empty_dir_volumes(workload):
            podman("volume", "rm", "-f", volume, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)


def logs(container: str) -> str:
    done = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
    return done.stdout + done.stderr


def ip_of(container: str) -> str:
    networks = json.loads(podman("inspect", container, "--format", "{{json .NetworkSettings.Networks}}"))
    return networks[NETWORK]["IPAddress"]


MAIN_CONTAINERS: dict[str, list[str]] = {}


def containers_of(workload: str) -> list[str]:
    """The names podman gives the pod's (not its init) containers: <name>-pod-0-<container>."""
    return [f"{workload}-pod-0-{c}" for c in MAIN_CONTAINERS.get(workload, [])]


def http_json(url: str, body: dict | None = None, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def stream_completion(gateway: str, prompt: str, tokens: int, on_chunk=None) -> str:
    request = urllib.request.Request(
        f"{gateway}/v1/completions",
        data=json.dumps(
            {"model": "neurollm", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
        ).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    text, chunks = [], 0
    with urllib.request.urlopen(request, timeout=300) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            text.append(event["choices"][0].get("text", ""))
            chunks += 1
            if on_chunk:
                on_chunk(chunks)
    return "".join(text)


def operator_start(image: str, work: Path) -> tuple[str, str]:
    """The operator image started as a pod would start it, but with a Kubernetes API that
    does not answer (there is none here): the uid it ran as, and what it said. It lists
    NeuroShardNodes before serving anything, so it must stop, saying what it could not reach.
    (Its /healthz with an API behind it is checked by tests/tests/operator.rs.)"""
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "none"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none", "namespace": NAMESPACE}}],
                "current-context": "none",
            }
        )
    )
    os.chmod(kubeconfig, 0o644)
    done = subprocess.run(
        [
            "podman", "run", "--rm", "--network", NETWORK, "--read-only", "--tmpfs", "/tmp",
            "-v", f"{kubeconfig}:/etc/neuroshard/kubeconfig:ro", "-e", "KUBECONFIG=/etc/neuroshard/kubeconfig",
            "-e", "NEUROSHARD_OPERATOR_LEADER_ELECTION=false", "-e", "NEUROSHARD_OPERATOR_TLS__INSECURE_PLAINTEXT=true",
            "-e", "NEUROSHARD_OPERATOR_REGISTRY=http://layer-registry:7400",
            "-e", "NEUROSHARD_OPERATOR_KEY_FILE=/tmp/operator.key",
            "--entrypoint", "/bin/sh", image, "-c", "id -u; exec /usr/local/bin/neuroshard-operator",
        ],
        capture_output=True, text=True, timeout=60,
    )
    return done.stdout.split()[0] if done.stdout.split() else "", done.stderr


def grpc_health(address: str, service: str = "") -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(what: str, probe, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as e:  # the thing waited for is not up yet
            last = e
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-prefix", default="localhost/neuroshard")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--values", default=str(ROOT / "charts/neuroshard/ci/kube-play-values.yaml"))
    args = parser.parse_args()
    check = Check()
    # Ctrl-C (or SIGTERM) stops the run and still removes what it made; it is not a failed
    # check, so it says so instead of dumping the pods' logs. The podman call it cut short
    # fails too (the terminal signals the whole group): that is the interrupt, not a finding.
    interrupted = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kube-play-"))
    played: list[Path] = []
    workloads: dict = {}
    try:
        say("rendering the chart's control plane and the operator's two nodes")
        documents = control_plane(render_chart(Path(args.values), args.image_prefix, args.tag))
        documents.append(tokenizer_config_map(work))
        documents += render_nodes(args.image_prefix, args.tag, work)
        workloads = {w.name: w for w in for_podman(documents, NAMESPACE)}
        for name, workload in workloads.items():
            pod_spec = workload.documents[-1]["spec"]["template"]["spec"]
            MAIN_CONTAINERS[name] = [c["name"] for c in pod_spec["containers"]]
        order = [*CONTROL_PLANE, *NODES]
        check(sorted(workloads) == sorted(order), f"workloads to play: {sorted(workloads)}")

        clean_up(workloads.values())
        podman("network", "create", NETWORK)
        def play(name: str) -> None:
            workload = workloads[name]
            file = work / f"{name}.yaml"
            file.write_text(yaml.safe_dump_all(workload.documents))
            network = NETWORK + "".join(f":alias={a}" if i == 0 else f",alias={a}" for i, a in enumerate(workload.aliases))
            say(f"podman kube play {name} ({', '.join(workload.aliases[:1]) or 'no Service'})")
            played.append(file)
            podman("kube", "play", "--network", network, str(file))

        # PostgreSQL first (the services migrate their databases at start), then the other
        # services together, then the nodes together, as a cluster would start them.
        play("postgresql")
        wait_for(
            "PostgreSQL",
            lambda: "ready to accept connections" in logs(containers_of("postgresql")[0]),
            90,
        )
        for group in (CONTROL_PLANE[1:], NODES):
            with ThreadPoolExecutor(len(group)) as pool:
                list(pool.map(play, group))

        gateway = f"http://{ip_of(containers_of('swarm-gateway')[0])}:8080"
        say(f"waiting for the gateway at {gateway} and two nodes with spans")
        def two_nodes_with_spans():
            status = http_json(f"{gateway}/api/v1/status")
            placed = [n for n in status.get("nodes", []) if n["state"] == "live" and n["span"][1] > n["span"][0]]
            return status if len(placed) == 2 else None

        status = wait_for("two live nodes with spans", two_nodes_with_spans, 240)
        for node in status["nodes"]:
            check(True, f"registry assigned {node['endpoint']} span {node['span']} ({node['role']})")
        wait_for("/readyz", lambda: urllib.request.urlopen(f"{gateway}/readyz", timeout=5).status == 200, 120)

        for workload in order:
            for container in containers_of(workload):
                uid = podman("top", container, "huser").split()[1:]
                check(bool(uid) and all(u == "10001" for u in uid), f"{container} runs as uid 10001 (saw {uid})")
                service = next((s for s in HEALTH_PORTS if s in container or (workload in NODES and s == "shard-worker")), None)
                if service:
                    address = f"{ip_of(container)}:{HEALTH_PORTS[service]}"
                    check(grpc_health(address) == "SERVING", f"{container} answers its health check at {address}")
                    if service == "shard-worker":
                        # What the operator's readiness probe asks: is the span loaded?
                        loaded = grpc_health(address, "neuroshard.worker.v1.Loaded")
                        check(loaded == "SERVING", f"{container} reports its span loaded ({loaded})")
        check(urllib.request.urlopen(f"{gateway}/healthz", timeout=5).status == 200, "swarm-gateway answers /healthz")
        user, said = operator_start(f"{args.image_prefix}/neuroshard-operator:{args.tag}", work)
        check(
            user == "10001" and "listing NeuroShardNodes failed" in said and "is the CRD installed?" in said,
            f"the operator container starts as uid {user} and, with no Kubernetes API here, stops naming what it could not list",
        )
        # Every image runs as non-root.
        for image in ["layer-registry", "shard-worker", "diloco-aggregator", "ledger", "swarm-gateway", "neuroshard-operator"]:
            user = podman("image", "inspect", "--format", "{{.Config.User}}", f"{args.image_prefix}/{image}:{args.tag}").strip()
            check(user == "10001:10001", f"image {image} runs as {user}")

        # Long enough that the stream is still going when its worker is killed (context: 256).
        prompt, tokens = "ROMEO: ", 200
        say("a streamed completion through the worker containers")
        reference = stream_completion(gateway, prompt, tokens)
        check(len(reference) > 0, f"streamed completion: {reference[:60]!r}…")

        say("the same completion, killing the worker container that serves it mid-stream")
        killed: list[str] = []
        seen = [0]
        # The workers' processes, looked up beforehand: the tiny model streams 200 tokens in
        # well under a second, so the kill must not wait on podman.
        pids = {
            pod: int(podman("inspect", "--format", "{{.State.Pid}}", containers_of(pod)[0]).strip())
            for pod in NODES
        }

        def kill_the_route(chunks: int) -> None:
            seen[0] = chunks
            if killed:
                return
            status = http_json(f"{gateway}/api/v1/status")
            streaming = [r for r in status.get("requests", []) if r["state"] in ("streaming", "prefill")]
            if not streaming:
                return
            endpoints = {n["id"]: n["endpoint"] for n in status["nodes"]}
            pod = endpoints[streaming[0]["route"][0]].split("//")[1].split(".")[0]
            os.kill(pids[pod], signal.SIGKILL)
            killed.append(pod)

        again = stream_completion(gateway, prompt, tokens, on_chunk=kill_the_route)
        check(
            bool(killed) and seen[0] > 1,
            f"killed the serving worker container mid-stream ({killed}, after the first chunk of {seen[0]})",
        )
        check(again == reference, "after failover the text is the same")
        requests = http_json(f"{gateway}/api/v1/status").get("requests", [])
        check(any(r.get("failovers", 0) >= 1 for r in requests), "the gateway reports a failover")
        say(f"done in {time.monotonic() - started:.0f} s")
    except KeyboardInterrupt:
        pass
    except Exception as e:
        if not interrupted.is_set():
            check(False, f"{type(e).__name__}: {e}")
    finally:
        if check.failures and not interrupted.is_set():
            for file in played:
                for container in containers_of(file.stem):
                    print(f"--- logs of {container}", file=sys.stderr)
                    print("\n".join(logs(container).splitlines()[-40:]), file=sys.stderr)
        if os.environ.get("KEEP") != "1":
            for file in reversed(played):
                podman("kube", "down", str(file), check=False)
            if workloads:
                clean_up(workloads.values())
            shutil.rmtree(work, ignore_errors=True)
    if interrupted.is_set():
        print("kube-play: interrupted; its pods, network and volumes are removed")
        return 130
    print(f"kube-play: {'passed' if not check.failures else 'FAILED: ' + '; '.join(check.failures)}")
    return 0 if not check.failures else 1


if __name__ == "__main__":
    sys.exit(main())
