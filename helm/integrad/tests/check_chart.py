"""Checks the integrad chart with the real Helm engine and the Kubernetes schemas.

    python check_chart.py            (from anywhere; tests/it/helm.rs runs it in CI)

1. `helm lint --strict` (Helm v4's own linter, through helm-python-sdk) finds no warning or
   error, with the defaults and with every ci/*-values.yaml scenario.
2. Every scenario renders with Helm's engine, and every manifest validates against the
   Kubernetes OpenAPI schemas of KUBE_VERSION (kubernetes-validate, strict: unknown fields
   fail). CRDs (ServiceMonitor, KServe's InferenceService) have no schema there: their
   structure is checked by hand, and the pod parts they carry are validated as Pods.
3. The properties a platform team asks for: native gRPC probes, resources, the hardened
   security context, the GPU limit and placement, integrad next to Triton on the shared
   model volume, TLS and the token mounted from Secrets, the HPA, and the explain-batch Indexed
   Job (--shard $(JOB_COMPLETION_INDEX)/N against the release's Service, the data read-only,
   the client side of the server's TLS and token), whose rendered form goes in the report.
4. values.schema.json rejects bad values, and the templates refuse inconsistent ones.
5. The examples (Triton sidecar Deployment, KServe InferenceService) pass the same checks.

Prints one JSON line {"ok": true, "checks": N, ...}; any failure raises (exit status 1).
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

CHART = pathlib.Path(__file__).resolve().parents[1]
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes are GA
# in 1.27) and a current one: a manifest must be valid on both.
KUBE_VERSIONS = ["1.27.0", "1.34.0"]
RELEASE = "ci"
NAMESPACE = "ml"

# The flag and env names agreed across the project (README, docs): the chart may set no other
# INTEGRAD_* variable, and no other integrad flag.
AGREED_ENV = {
    "INTEGRAD_LISTEN",
    "INTEGRAD_HTTP_LISTEN",
    "INTEGRAD_PREDICTOR",
    "INTEGRAD_WEB",
    "INTEGRAD_MODELS",
    "INTEGRAD_MODEL_FILE",
    "INTEGRAD_DEFAULT_MODEL",
    "INTEGRAD_MAX_MESSAGE_BYTES",
    "INTEGRAD_MAX_IMAGE_PIXELS",
    "INTEGRAD_MAX_STEPS",
    "INTEGRAD_CACHE_DIR",
    "INTEGRAD_INTRA_THREADS",
    "INTEGRAD_CONFIG",
    "INTEGRAD_AUTH_TOKEN_FILE",
    "INTEGRAD_AUTH_TOKEN",
    "INTEGRAD_OTLP_ENDPOINT",
    "INTEGRAD_METRICS_LISTEN",
    "INTEGRAD_HEALTH_LISTEN",
    "INTEGRAD_LOG_FORMAT",
    "INTEGRAD_DEVICE",
}
# --http_port and --model_name: the arguments KServe gives an explainer, set in its example.
AGREED_FLAGS = {"--tls-cert", "--tls-key", "--tls-client-ca", "--http_port", "--model_name"}
# `integrad explain-batch`'s flags that the batch Job sets itself (batchJob.extraArgs adds more).
AGREED_BATCH_FLAGS = {
    "--input", "--out", "--server", "--shard", "--model", "--steps",
    "--tls-ca", "--tls-client-cert", "--tls-client-key", "--auth-token-file",
}
# Keys of the config file are long flag names (without the dashes).
AGREED_CONFIG_KEYS = {
    "models", "model-file", "default-model", "max-message-bytes", "max-image-pixels",
    "max-steps", "cache-dir", "intra-threads", "inter-threads", "max-concurrent-explains",
    "max-queued-explains", "shutdown-grace", "log-format", "device", "otlp-endpoint",
    "metrics-listen", "listen", "ort-lib", "tls-cert", "tls-key", "tls-client-ca",
    "auth-token-file", "health-listen", "http-listen",
}
# Models load and build gradient graphs before SERVING; the startup probe must wait this long.
MIN_STARTUP_SECONDS = 600

checks = 0


def check(condition: bool, message: str) -> None:
    global checks
    checks += 1
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------- rendering and validation


def render(values: dict) -> list[dict]:
    """Every object the chart renders for `values` (NOTES.txt aside)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            check("grpcurl" in text and "integrad predict" in text, "NOTES.txt says how to call it")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__source"] = path
                objects.append(doc)
    return objects


def validate(obj: dict, where: str) -> None:
    """Against the Kubernetes schemas, or by structure for the CRDs they do not know."""
    body = {k: v for k, v in obj.items() if k != "__source"}
    api = body.get("apiVersion", "")
    if api == "monitoring.coreos.com/v1":
        check_service_monitor_shape(body, where)
    elif api.startswith("serving.kserve.io/"):
        check_inference_service_shape(body, where)
    else:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(
                    f"{where}: {body.get('kind')} {body['metadata'].get('name')} is not valid "
                    f"Kubernetes {version}: {e.message} at {list(e.path)}"
                ) from e
            check(True, "validated")


def as_pod(spec: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def check_service_monitor_shape(sm: dict, where: str) -> None:
    check(sm["kind"] == "ServiceMonitor", f"{where}: kind")
    check(bool(sm["spec"]["selector"]["matchLabels"]), f"{where}: ServiceMonitor selects by label")
    for endpoint in sm["spec"]["endpoints"]:
        check(set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"},
              f"{where}: unknown endpoint field in {endpoint}")
        check(endpoint["path"] == "/metrics", f"{where}: scrapes /metrics")


def check_inference_service_shape(isvc: dict, where: str) -> None:
    check(isvc["apiVersion"] == "serving.kserve.io/v1beta1", f"{where}: InferenceService v1beta1")
    check(isvc["kind"] == "InferenceService", f"{where}: kind")
    spec = isvc["spec"]
    check(set(spec) <= {"predictor", "explainer", "transformer"}, f"{where}: spec keys {set(spec)}")
    check("predictor" in spec, f"{where}: an InferenceService needs a predictor")
    for component in ("explainer", "transformer"):
        if component in spec:
            # A component is a pod spec plus KServe's own fields: validate the pod part.
            pod = {k: v for k, v in spec[component].items()
                   if k not in {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
                                "containerConcurrency", "timeout", "canaryTrafficPercent",
                                "logger", "batcher"}}
            validate(as_pod(pod, f"{isvc['metadata']['name']}-{component}"), f"{where}: {component}")


# ---------------------------------------------------------------- what every integrad pod needs


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    check(len(found) == 1, f"expected one {kind}, got {len(found)}")
    return found[0]


def kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def mount_at(container: dict, path: str) -> dict | None:
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            return m
    return None


def volume(pod: dict, name: str) -> dict:
    found = [v for v in pod.get("volumes", []) if v["name"] == name]
    check(len(found) == 1, f"volume {name} is defined once")
    return found[0]


def check_hardened(pod: dict, c: dict, where: str) -> None:
    """What every container of the chart has: resources, the hardened security context, /tmp."""
    # Resources: requests for scheduling, a memory limit for the node's sake.
    r = c.get("resources", {})
    check({"cpu", "memory"} <= set(r.get("requests", {})), f"{where}: cpu and memory requests")
    check("memory" in r.get("limits", {}), f"{where}: a memory limit")

    # Security context, container level (pod level checked too).
    sc = c["securityContext"]
    psc = pod.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True, f"{where}: non-root")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where}: read-only root filesystem")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops ALL capabilities")
    check(sc.get("privileged") is not True, f"{where}: not privileged")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    check(seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")

    # The read-only root filesystem leaves /tmp, which must be an emptyDir.
    tmp = mount_at(c, "/tmp")
    check(tmp is not None and "emptyDir" in volume(pod, tmp["name"]), f"{where}: /tmp is an emptyDir")


def check_integrad_container(
    pod: dict, c: dict, where: str, grpc_port: int, *, tls: bool, health_port: int | None = None,
    injected_models: bool = False
) -> None:
    env = env_of(c)
    check(c["args"][0] == "serve", f"{where}: runs `integrad serve`")
    unknown_env = {n for n in env if n.startswith("INTEGRAD_")} - AGREED_ENV
    check(not unknown_env, f"{where}: env names not agreed: {unknown_env}")
    flags = {a for a in c["args"] if a.startswith("--")}
    check(flags <= AGREED_FLAGS, f"{where}: flags not agreed: {flags - AGREED_FLAGS}")
    check(env["INTEGRAD_LISTEN"]["value"] == f"0.0.0.0:{grpc_port}",
          f"{where}: listens on all interfaces in the container")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(grpc_port in ports.values(), f"{where}: the gRPC port is declared")

    # The plaintext health-only port runs exactly when TLS is on and a port is given for it.
    health_listen = env.get("INTEGRAD_HEALTH_LISTEN", {}).get("value")
    if tls and health_port:
        check(health_listen == f"0.0.0.0:{health_port}",
              f"{where}: INTEGRAD_HEALTH_LISTEN is 0.0.0.0:{health_port}: {health_listen}")
        check(ports.get("grpc-health") == health_port, f"{where}: the health port is declared: {ports}")
        check(health_port != grpc_port, f"{where}: the health port is not the gRPC port")
    else:
        check(health_listen is None and "grpc-health" not in ports,
              f"{where}: no health-only port without TLS or without ports.health")

    # Probes: native gRPC health on the gRPC port, or under TLS on the plaintext health port
    # (TCP when TLS is on and there is no health port), a startup budget long enough for
    # loading and warm-up.
    probe_port = health_port if tls else grpc_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(probe in c, f"{where}: has a {probe}")
        p = c[probe]
        if probe_port is None:
            check("tcpSocket" in p, f"{where}: {probe} falls back to TCP under TLS without a health port")
        else:
            check(p.get("grpc", {}).get("port") == probe_port,
                  f"{where}: {probe} is a native gRPC probe on {probe_port}: {p}")
            check("service" not in p["grpc"], f"{where}: {probe} asks for the server's overall health")
    s = c["startupProbe"]
    budget = s.get("periodSeconds", 10) * s.get("failureThreshold", 3)
    check(budget >= MIN_STARTUP_SECONDS, f"{where}: startup budget {budget}s < {MIN_STARTUP_SECONDS}s")

    check_hardened(pod, c, where)

    # Models: INTEGRAD_MODELS is inside a read-only mount, or the image's own directory.
    models = env["INTEGRAD_MODELS"]["value"]
    m = mount_at(c, models)
    if injected_models:
        # KServe's storage initializer adds the /mnt/models volume and mount itself.
        check(m is None, f"{where}: {models} is left to KServe to mount")
    elif models.startswith("/opt/integrad/"):
        check(m is None, f"{where}: the image's models are not shadowed by a mount")
    else:
        check(m is not None and m.get("readOnly") is True,
              f"{where}: INTEGRAD_MODELS {models} is a read-only mount")

    # No secret value in the pod spec: tokens come from Secrets, never from literals.
    for name, e in env.items():
        if "TOKEN" in name and name != "INTEGRAD_AUTH_TOKEN_FILE":
            check("value" not in e and "secretKeyRef" in e.get("valueFrom", {}),
                  f"{where}: {name} comes from a Secret, not a literal")


def check_chart_pod(objects: list[dict], values: dict, where: str) -> tuple[dict, dict]:
    deploy = only(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers["integrad"]
    tls = values.get("tls", {}).get("enabled", False)
    health_port = values.get("ports", {}).get("health", 8081)
    check_integrad_container(pod, c, where, 50051, tls=tls, health_port=health_port)

    # The config file is a mounted ConfigMap holding TOML keyed by flag names.
    config_path = env_of(c)["INTEGRAD_CONFIG"]["value"]
    m = mount_at(c, config_path)
    check(m is not None, f"{where}: INTEGRAD_CONFIG {config_path} is mounted")
    cm_name = volume(pod, m["name"])["configMap"]["name"]
    cm = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    check(len(cm) == 1, f"{where}: the ConfigMap {cm_name} is rendered")
    config = tomllib.loads(cm[0]["data"][pathlib.PurePath(config_path).name])
    check(set(config) <= AGREED_CONFIG_KEYS, f"{where}: config keys {set(config) - AGREED_CONFIG_KEYS}")
    for key, value in values.get("config", {}).items():
        check(config.get(key) == value, f"{where}: config {key} = {config.get(key)!r}, set {value!r}")
    grace = config.get("shutdown-grace", 30)
    check(pod["terminationGracePeriodSeconds"] > grace, f"{where}: Kubernetes waits out the drain")

    # The Service exposes the gRPC (and metrics) ports by the container's port names.
    svc = only(objects, "Service")
    container_ports = {p["name"] for cc in pod["containers"] for p in cc["ports"]}
    for port in svc["spec"]["ports"]:
        check(port["targetPort"] in container_ports, f"{where}: Service port {port['name']} has a target")
    check("grpc" in {p["name"] for p in svc["spec"]["ports"]}, f"{where}: Service has the grpc port")
    selector = svc["spec"]["selector"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    check(selector.items() <= labels.items(), f"{where}: the Service selects the pods")

    sa = only(objects, "ServiceAccount")
    check(pod["serviceAccountName"] == sa["metadata"]["name"], f"{where}: runs as its ServiceAccount")
    check(pod["automountServiceAccountToken"] is False, f"{where}: no API token in the pod")
    check("Secret" not in kinds(objects), f"{where}: the chart renders no Secret")
    return pod, c


# ---------------------------------------------------------------- the scenarios


def scenario_default(objects, values, pod, c):
    check(kinds(objects) == {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"},
          f"default renders {kinds(objects)}")
    check([x["name"] for x in pod["containers"]] == ["integrad"], "one container")
    check("nvidia.com/gpu" not in c["resources"].get("limits", {}), "no GPU by default")
    check(not c["image"].endswith("-cuda"), "the CPU image by default")
    check("INTEGRAD_DEVICE" not in env_of(c), "device left to integrad's default")
    check(env_of(c)["INTEGRAD_METRICS_LISTEN"]["value"] == "0.0.0.0:9090", "metrics on :9090")
    check("INTEGRAD_HTTP_LISTEN" not in env_of(c), "no HTTP API by default")
    check("INTEGRAD_WEB" not in env_of(c), "no web viewer by default")


def scenario_gpu(objects, values, pod, c):
    limits = c["resources"]["limits"]
    check(limits.get("nvidia.com/gpu") == 1, f"gpu: nvidia.com/gpu limit: {limits}")
    check("memory" in limits, "gpu: the memory limit is kept beside the GPU")
    check(c["image"].endswith(":0.1.0-cuda"), f"gpu: the CUDA image: {c['image']}")
    check(env_of(c)["INTEGRAD_DEVICE"]["value"] == "cuda", "gpu: INTEGRAD_DEVICE=cuda")
    check(pod["nodeSelector"] == {"nvidia.com/gpu.present": "true",
                                  "node.kubernetes.io/instance-type": "gpu-node"},
          f"gpu: GPU node selector merged with the user's: {pod['nodeSelector']}")
    check({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"],
          "gpu: tolerates the GPU taint")
    check(pod["runtimeClassName"] == "nvidia", "gpu: runtime class")
    pvc = only(objects, "PersistentVolumeClaim")
    models = volume(pod, "models")
    check(models["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], "gpu: models on the PVC")
    check(pvc["spec"]["storageClassName"] == "fast-ssd", "gpu: storage class passed through")
    init = pod["initContainers"][0]
    init_mount = mount_at(init, env_of(c)["INTEGRAD_MODELS"]["value"])
    check(init_mount is not None and init_mount["name"] == "models" and not init_mount.get("readOnly"),
          "gpu: the init container writes where integrad reads")
    check(init["securityContext"]["readOnlyRootFilesystem"] is True, "gpu: init container hardened too")


def scenario_sidecar(objects, values, pod, c):
    names = [x["name"] for x in pod["containers"]]
    check(sorted(names) == ["integrad", "triton"], f"sidecar: integrad next to Triton: {names}")
    triton = next(x for x in pod["containers"] if x["name"] == "triton")
    models = env_of(c)["INTEGRAD_MODELS"]["value"]
    repo = [a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository=")]
    check(repo == [models], f"sidecar: Triton's repository {repo} is integrad's {models}")
    mi, mt = mount_at(c, models), mount_at(triton, models)
    check(mi is not None and mt is not None and mi["name"] == mt["name"], "sidecar: one shared model volume")
    check(volume(pod, mi["name"])["persistentVolumeClaim"]["claimName"] == "triton-model-repository",
          "sidecar: the existing claim")
    check("nvidia.com/gpu" not in c["resources"].get("limits", {}), "sidecar: Triton holds the GPU, not integrad")
    check(triton["resources"]["limits"]["nvidia.com/gpu"] == 1, "sidecar: Triton's GPU")
    ports = {p["port"] for p in only(objects, "Service")["spec"]["ports"]}
    check({50051, 8000, 8001, 8002} <= ports, f"sidecar: Service exposes both: {ports}")
    all_ports = [p["containerPort"] for x in pod["containers"] for p in x["ports"]]
    check(len(all_ports) == len(set(all_ports)), f"sidecar: no port clash in the pod: {all_ports}")


def scenario_tls_auth(objects, values, pod, c):
    args = c["args"]

    def flag(name):
        check(args.count(name) == 1, f"tls: {name} given once")
        return args[args.index(name) + 1]

    for name, secret, key in [("--tls-cert", "integrad-tls", "tls.crt"),
                              ("--tls-key", "integrad-tls", "tls.key"),
                              ("--tls-client-ca", "integrad-tls", "ca.crt")]:
        path = flag(name)
        m = mount_at(c, path)
        check(m is not None and m["readOnly"], f"tls: {name} {path} is on a read-only mount")
        v = volume(pod, m["name"])["secret"]
        check(v["secretName"] == secret, f"tls: {name} comes from Secret {secret}")
        check(path.endswith("/" + key), f"tls: {name} names the Secret's {key}")
        if "items" in v:
            check(key in {i["path"] for i in v["items"]}, f"tls: {key} is projected")
    env = env_of(c)
    token_file = env["INTEGRAD_AUTH_TOKEN_FILE"]["value"]
    m = mount_at(c, token_file)
    check(m is not None and volume(pod, m["name"])["secret"]["secretName"] == "integrad-auth",
          "auth: the token file is the mounted Secret")
    check("INTEGRAD_AUTH_TOKEN" not in env, "auth: no token in the env when it is a file")
    check(env["INTEGRAD_OTLP_ENDPOINT"]["value"].startswith("http://"), "otel: OTLP endpoint set")
    check(env["OTEL_SERVICE_NAME"]["value"] == f"{RELEASE}-integrad", "otel: service name")
    sm = only(objects, "ServiceMonitor")
    svc_ports = {p["name"] for p in only(objects, "Service")["spec"]["ports"]}
    check({e["port"] for e in sm["spec"]["endpoints"]} <= svc_ports, "ServiceMonitor scrapes a Service port")
    check(sm["metadata"]["labels"]["release"] == "prometheus", "ServiceMonitor labels passed through")
    np = only(objects, "NetworkPolicy")
    rules = np["spec"]["ingress"]
    check(rules[0]["ports"][0]["port"] == "grpc" and rules[0]["from"], "NetworkPolicy limits who calls gRPC")
    health = [r for r in rules if r["ports"] == [{"port": "grpc-health", "protocol": "TCP"}]]
    check(len(health) == 1 and health[0]["from"] == values["networkPolicy"]["healthFrom"],
          f"NetworkPolicy admits the kubelet to the health port from healthFrom: {rules}")
    check("grpc-health" not in {p["targetPort"] for p in only(objects, "Service")["spec"]["ports"]},
          "tls: the health port is for the kubelet, not on the Service")
    check(np["spec"]["policyTypes"] == ["Ingress"], "NetworkPolicy leaves egress (OTLP) open")
    http = values["ports"]["http"]
    check(env["INTEGRAD_HTTP_LISTEN"]["value"] == f"0.0.0.0:{http}", "http: the HTTP API listens")
    check({"name": "http", "containerPort": http, "protocol": "TCP"} in c["ports"], "http: a container port")
    check(any(p["name"] == "http" and p["port"] == http for p in only(objects, "Service")["spec"]["ports"]),
          "http: on the Service")
    check({"port": "http", "protocol": "TCP"} in rules[0]["ports"],
          "http: the NetworkPolicy admits gRPC's callers to the HTTP API")
    check(env["INTEGRAD_WEB"]["value"] == "true", "web: the viewer is on")


def scenario_autoscaling(objects, values, pod, c):
    deploy = only(objects, "Deployment")
    hpa = only(objects, "HorizontalPodAutoscaler")
    check(hpa["apiVersion"] == "autoscaling/v2", "autoscaling/v2")
    check("replicas" not in deploy["spec"], "autoscaling: the HPA owns replicas")
    target = hpa["spec"]["scaleTargetRef"]
    check(target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]},
          f"autoscaling: scales the Deployment: {target}")
    check((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8), "autoscaling: bounds")
    types = [m["type"] for m in hpa["spec"]["metrics"]]
    check(types == ["Resource", "Pods"], f"autoscaling: CPU then the custom metric: {types}")
    check(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70, "CPU target")
    pdb = only(objects, "PodDisruptionBudget")
    check(pdb["spec"].get("minAvailable") == 1 and "maxUnavailable" not in pdb["spec"], "PDB minAvailable")
    token = env_of(c)["INTEGRAD_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    check(token == {"name": "integrad-auth", "key": "token"}, "auth env mode: secretKeyRef")
    models = volume(pod, "models")
    check("emptyDir" in models and pod["initContainers"][0]["name"] == "fetch-models",
          "autoscaling: models pulled into an emptyDir by the init container")


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def arg_of(args: list[str], name: str, where: str) -> str:
    check(args.count(name) == 1, f"{where}: {name} given once: {args}")
    return args[args.index(name) + 1]


def check_batch_job(objects: list[dict], values: dict, where: str) -> dict:
    """The explain-batch Indexed Job: what it runs, against which Service, on which volumes."""
    bj = values["batchJob"]
    tls = values.get("tls", {}).get("enabled", False)
    mtls = tls and values["tls"].get("clientCA", {}).get("enabled", False)
    auth = values.get("auth", {})
    job = only(objects, "Job")
    deploy = only(objects, "Deployment")
    svc = only(objects, "Service")
    check(job["apiVersion"] == "batch/v1", f"{where}: batch/v1 Job")
    name = job["metadata"]["name"]
    expected_name = f"{RELEASE}-integrad-explain-batch" + (f"-{bj['runId']}" if bj.get("runId") else "")
    check(name == expected_name, f"{where}: the Job is {expected_name}: {name}")
    spec = job["spec"]
    shards = bj.get("shards", 4)
    check(spec["completionMode"] == "Indexed", f"{where}: an Indexed Job")
    check(spec["completions"] == shards, f"{where}: completions {spec['completions']} == shards {shards}")
    check(spec["parallelism"] == (bj.get("parallelism") or shards), f"{where}: parallelism {spec['parallelism']}")
    check(spec["backoffLimit"] == bj.get("backoffLimit", 6), f"{where}: backoffLimit")
    check(spec.get("ttlSecondsAfterFinished") == bj.get("ttlSecondsAfterFinished"), f"{where}: ttlSecondsAfterFinished")
    pod = spec["template"]["spec"]
    check(pod["restartPolicy"] == "Never", f"{where}: a failed shard gets a new pod")

    # Its pods are not server pods: neither the Service, nor the Deployment, nor the PDB,
    # nor the NetworkPolicy's podSelector may take them for one.
    labels = spec["template"]["metadata"]["labels"]
    check(not selects(svc["spec"]["selector"], labels), f"{where}: the Service does not select the Job's pods")
    check(not selects(deploy["spec"]["selector"]["matchLabels"], labels), f"{where}: nor the Deployment")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in (o for o in objects if o["kind"] == kind):
            selector = o["spec"].get("selector", o["spec"].get("podSelector"))["matchLabels"]
            check(not selects(selector, labels), f"{where}: the {kind} does not select the Job's pods")
    check(labels.get("app.kubernetes.io/instance") == RELEASE, f"{where}: the Job's pods carry the release")
    check(pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"],
          f"{where}: the Job runs as the chart's ServiceAccount")
    check(pod["automountServiceAccountToken"] is False, f"{where}: no API token in the Job's pods")
    check(pod["securityContext"] == deploy["spec"]["template"]["spec"]["securityContext"],
          f"{where}: the Job's pod security context is the server's")

    (c,) = pod["containers"]
    server_image = next(x for x in deploy["spec"]["template"]["spec"]["containers"] if x["name"] == "integrad")["image"]
    check(c["image"] == server_image, f"{where}: the Job runs the server's image: {c['image']}")
    check_hardened(pod, c, where)
    env = env_of(c)
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    check(index == "metadata.annotations['batch.kubernetes.io/job-completion-index']",
          f"{where}: JOB_COMPLETION_INDEX comes from the pod's completion index: {index}")
    args = c["args"]
    check(c.get("command") == ["integrad"] and args[0] == "explain-batch", f"{where}: runs `integrad explain-batch`")
    extra = bj.get("extraArgs", [])
    check(args[len(args) - len(extra):] == extra, f"{where}: batchJob.extraArgs come last")
    flags = {a for a in args[:len(args) - len(extra)] if a.startswith("--")}
    check(flags <= AGREED_BATCH_FLAGS, f"{where}: explain-batch flags not agreed: {flags - AGREED_BATCH_FLAGS}")
    check(arg_of(args, "--shard", where) == f"$(JOB_COMPLETION_INDEX)/{shards}", f"{where}: --shard I/{shards}")

    # --server is this release's Service, on its gRPC port, https:// under TLS.
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    host = bj.get("serverHost") or f"{svc['metadata']['name']}.{NAMESPACE}.svc"
    server = arg_of(args, "--server", where)
    check(server == f"{'https' if tls else 'http'}://{host}:{grpc_port}", f"{where}: --server {server}")

    # The rows come from a read-only mount of the data claim, the results go to a writable one.
    data, results = bj["data"], bj.get("results", {})
    data_mount_path = data.get("mountPath", "/data")
    results_mount_path = results.get("mountPath", "/results")
    input_path = arg_of(args, "--input", where)
    check(input_path == f"{data_mount_path.rstrip('/')}/{data.get('file', 'rows.jsonl')}", f"{where}: --input {input_path}")
    m = mount_at(c, input_path)
    check(m is not None and m["mountPath"] == data_mount_path and m.get("readOnly") is True,
          f"{where}: --input is on the read-only data mount: {m}")
    check(m.get("subPath", "") == data.get("subPath", ""), f"{where}: the data subPath")
    check(volume(pod, m["name"])["persistentVolumeClaim"]["claimName"] == data["existingClaim"],
          f"{where}: the data claim")
    out = arg_of(args, "--out", where)
    check(out == f"{results_mount_path.rstrip('/')}/results-$(JOB_COMPLETION_INDEX).jsonl", f"{where}: --out {out}")
    r = mount_at(c, out)
    check(r is not None and r["mountPath"] == results_mount_path and not r.get("readOnly"),
          f"{where}: --out is on a writable mount: {r}")
    check(r.get("subPath", "") == results.get("subPath", ""), f"{where}: the results subPath")
    results_claim = results.get("existingClaim") or data["existingClaim"]
    check(volume(pod, r["name"])["persistentVolumeClaim"]["claimName"] == results_claim, f"{where}: the results claim")
    check((r["name"] == m["name"]) == (results_claim == data["existingClaim"]),
          f"{where}: one volume for one claim, two for two")

    # The server's TLS and token, from the client's side.
    if tls:
        ca = arg_of(args, "--tls-ca", where)
        mca = mount_at(c, ca)
        check(mca is not None and mca["readOnly"], f"{where}: --tls-ca {ca} on a read-only mount")
        secret = volume(pod, mca["name"])["secret"]
        ca_secret = bj.get("tls", {}).get("caSecretName") or values["tls"]["secretName"]
        check(secret["secretName"] == ca_secret, f"{where}: the CA comes from {ca_secret}")
        check([i["key"] for i in secret.get("items", [])] == ["ca.crt"] and ca.endswith("/ca.crt"),
              f"{where}: only the CA is projected, never the server's key: {secret}")
    else:
        check("--tls-ca" not in args, f"{where}: no --tls-ca for a plaintext server")
    if mtls:
        cert, key = arg_of(args, "--tls-client-cert", where), arg_of(args, "--tls-client-key", where)
        mc = mount_at(c, cert)
        check(mc is not None and mc["readOnly"] and mount_at(c, key)["name"] == mc["name"],
              f"{where}: the client certificate and key on one read-only mount")
        secret = volume(pod, mc["name"])["secret"]
        check(secret["secretName"] == bj["tls"]["clientSecretName"], f"{where}: the client certificate's Secret")
        check(secret["secretName"] != values["tls"]["secretName"], f"{where}: not the server's own certificate")
        check(cert.endswith("/tls.crt") and key.endswith("/tls.key"), f"{where}: tls.crt and tls.key")
    else:
        check("--tls-client-cert" not in args, f"{where}: no client certificate without mutual TLS")
    if auth.get("enabled") and auth.get("mode", "file") == "file":
        token = arg_of(args, "--auth-token-file", where)
        mt = mount_at(c, token)
        check(mt is not None and volume(pod, mt["name"])["secret"]["secretName"] == auth["existingSecret"],
              f"{where}: the token file is the server's token Secret")
        check(token.endswith("/" + auth.get("secretKey", "token")), f"{where}: the token's key")
        check("INTEGRAD_AUTH_TOKEN" not in env, f"{where}: no token in the env as a file")
    elif auth.get("enabled"):
        check(env["INTEGRAD_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
              == {"name": auth["existingSecret"], "key": auth.get("secretKey", "token")},
              f"{where}: INTEGRAD_AUTH_TOKEN from the token Secret")
        check("--auth-token-file" not in args, f"{where}: no token file in env mode")
    else:
        check("--auth-token-file" not in args and "INTEGRAD_AUTH_TOKEN" not in env, f"{where}: no token")
    for n, e in env.items():
        if "TOKEN" in n:
            check("value" not in e, f"{where}: {n} comes from a Secret, not a literal")

    # Under a NetworkPolicy that limits gRPC callers, the Job's pods are among them.
    for np in (o for o in objects if o["kind"] == "NetworkPolicy"):
        grpc_rule = np["spec"]["ingress"][0]
        if "from" in grpc_rule:
            check(any(selects(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), labels)
                      for p in grpc_rule["from"]), f"{where}: the NetworkPolicy admits the Job's pods to gRPC")

    # The init container waits for a Ready server behind the Service.
    wait = bj.get("waitForServer", {}).get("enabled", True)
    inits = pod.get("initContainers", [])
    check([i["name"] for i in inits] == (["wait-for-server"] if wait else []), f"{where}: wait-for-server")
    if wait:
        i = inits[0]
        check(i["image"] == c["image"], f"{where}: the wait uses the same image")
        check_hardened(pod, i, f"{where}: wait-for-server")
        ienv = {e["name"]: e["value"] for e in i["env"]}
        check((ienv["SERVER_HOST"], ienv["SERVER_PORT"]) == (host, str(grpc_port)),
              f"{where}: waits for the --server host and port: {ienv}")
        check("$(" not in i["command"][-1], f"{where}: nothing in the script for Kubernetes to expand")
    return {"job": {k: v for k, v in job.items() if k != "__source"},
            "service": svc["metadata"]["name"], "namespace": NAMESPACE, "grpc_port": grpc_port}


def scenario_batch_job(objects, values, pod, c):
    check(kinds(objects) == {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget", "Job"},
          f"batch-job renders {kinds(objects)}")
    check_batch_job(objects, values, "batch-job")


def check_batch_job_variants() -> list[str]:
    """The batch Job against the TLS + mutual TLS + token-file server of ci/tls-auth-values.yaml,
    and against a TLS server with the token in the env, results on a claim of their own and no
    wait."""
    done = []
    tls = yaml.safe_load((CHART / "ci/tls-auth-values.yaml").read_text())
    batch = yaml.safe_load((CHART / "ci/batch-job-values.yaml").read_text())["batchJob"]
    variants = []
    values = copy.deepcopy(tls)
    values["batchJob"] = copy.deepcopy(batch)
    values["batchJob"]["tls"] = {"clientSecretName": "integrad-batch-client"}
    variants.append(("batch-job-mtls-token-file", values))
    values = copy.deepcopy(tls)
    values["tls"]["clientCA"] = {"enabled": False}
    values["auth"]["mode"] = "env"
    values["batchJob"] = copy.deepcopy(batch)
    del values["batchJob"]["runId"]
    values["batchJob"].update({"parallelism": None, "waitForServer": {"enabled": False},
                               "serverHost": f"{RELEASE}-integrad.{NAMESPACE}.svc.cluster.local",
                               "tls": {"caSecretName": "cluster-ca"}})
    values["batchJob"]["results"] = {"existingClaim": "explanations", "mountPath": "/out"}
    variants.append(("batch-job-tls-token-env", values))
    for name, values in variants:
        objects = render(copy.deepcopy(values))
        for obj in objects:
            validate(obj, f"{name}: {obj['__source']}")
        check_chart_pod(objects, values, name)
        check_batch_job(objects, values, name)
        done.append(name)
    return done


SCENARIOS = {
    "batch-job": scenario_batch_job,
    "default": scenario_default,
    "gpu": scenario_gpu,
    "sidecar": scenario_sidecar,
    "tls-auth": scenario_tls_auth,
    "autoscaling": scenario_autoscaling,
}


def check_health_port_variants() -> list[str]:
    """The TLS scenario with another health port, and with none (the TCP fallback)."""
    done = []
    tls = yaml.safe_load((CHART / "ci/tls-auth-values.yaml").read_text())
    for name, health in [("tls-health-9555", 9555), ("tls-no-health-port", None)]:
        values = copy.deepcopy(tls)
        values["ports"] = {**values.get("ports", {}), "health": health}
        objects = render(copy.deepcopy(values))
        for obj in objects:
            validate(obj, f"{name}: {obj['__source']}")
        pod, c = check_chart_pod(objects, values, name)
        rules = only(objects, "NetworkPolicy")["spec"]["ingress"]
        health_rules = [r for r in rules if r["ports"][0]["port"] == "grpc-health"]
        check(len(health_rules) == (1 if health else 0),
              f"{name}: NetworkPolicy admits the health port only when it runs: {rules}")
        done.append(name)
    return done


# ---------------------------------------------------------------- bad values


BAD_VALUES = [
    # (values, what the error must name)
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"gpu": {"enabled": True, "device": "rocm"}}, "/gpu/device"),
    ({"probes": {"type": "exec"}}, "/probes/type"),
    ({"tls": {"enabled": True}}, "/tls/secretName"),
    ({"auth": {"enabled": True, "mode": "file"}}, "/auth/existingSecret"),
    ({"models": {"source": "s3"}}, "/models/source"),
    ({"config": {"listen": "0.0.0.0:1"}}, "/config/listen"),
    ({"ports": {"health": 70000}}, "/ports/health"),
    ({"ports": {"http": "8080"}}, "/ports/http"),
    ({"web": {"enabled": "yes"}}, "/web/enabled"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"imagee": {"tag": "typo"}}, "imagee"),
    ({"batchJob": {"enabled": True}}, "/batchJob/data/existingClaim"),
    ({"batchJob": {"shards": 0}}, "/batchJob/shards"),
    ({"batchJob": {"data": {"file": "rows.parquet"}}}, "/batchJob/data/file"),
    ({"batchJob": {"runId": "Run_2"}}, "/batchJob/runId"),
]
BAD_COMBINATIONS = [
    ({"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds"),
    ({"tls": {"enabled": True, "secretName": "s"}, "ports": {"health": 50051}}, "ports.health (50051) must differ"),
    ({"ports": {"http": 50051}}, "ports.http (50051) must differ"),
    ({"web": {"enabled": True}}, "web.enabled needs ports.http"),
    ({"triton": {"enabled": True}}, "triton.enabled needs a shared model volume"),
    ({"models": {"source": "initContainer"}}, "models.init needs"),
    ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "autoscaling.enabled needs"),
    ({"tls": {"enabled": True, "secretName": "s", "clientCA": {"enabled": True}},
      "batchJob": {"enabled": True, "data": {"existingClaim": "d"}}}, "batchJob.tls.clientSecretName"),
    ({"batchJob": {"enabled": True, "data": {"existingClaim": "d", "mountPath": "/data"},
                   "results": {"mountPath": "/data/out"}}}, "must not contain one another"),
]


def check_rejections() -> int:
    n = 0
    with helm.Chart.load(CHART) as chart:
        check(chart.schema is not None, "the chart ships values.schema.json")
        for values, names in BAD_VALUES:
            try:
                chart.validate_schema(chart.merge_values(values))
            except helm.HelmValuesError as e:
                check(names in str(e), f"schema error for {values} names {names}: {e}")
            else:
                raise AssertionError(f"values.schema.json accepted {values}")
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm.HelmError as e:
                check(names in str(e), f"render refuses {values} naming {names}: {e}")
            else:
                raise AssertionError(f"helm rendered bad values {values}")
            n += 1
        for values, message in BAD_COMBINATIONS:
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm.HelmError as e:
                check(message in str(e), f"render refuses {values} with {message!r}: {e}")
            else:
                raise AssertionError(f"helm rendered inconsistent values {values}")
            n += 1
        # A bad values *file*, as a user would pass with -f.
        bad_file = yaml.safe_load("gpu:\n  enabled: yes-please\n")
        try:
            chart.render(bad_file, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmValuesError as e:
            check("/gpu/enabled" in str(e), f"bad values file: {e}")
        else:
            raise AssertionError("a values file with gpu.enabled: yes-please rendered")
        n += 1
    return n


# ---------------------------------------------------------------- examples


def check_examples() -> list[str]:
    done = []
    triton = yaml.safe_load((CHART / "examples/triton-sidecar.yaml").read_text())
    validate(triton, "examples/triton-sidecar.yaml")
    pod = triton["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    check(set(containers) == {"triton", "integrad"}, "example: integrad next to Triton")
    check_integrad_container(pod, containers["integrad"], "examples/triton-sidecar.yaml", 50051, tls=False)
    models = env_of(containers["integrad"])["INTEGRAD_MODELS"]["value"]
    repo = [a.split("=", 1)[1] for a in containers["triton"]["args"] if a.startswith("--model-repository=")]
    check(repo == [models], "example: integrad reads Triton's model repository")
    check(mount_at(containers["integrad"], models)["name"] == mount_at(containers["triton"], models)["name"],
          "example: one shared model volume")
    done.append("triton-sidecar")

    isvc = yaml.safe_load((CHART / "examples/kserve-inferenceservice.yaml").read_text())
    validate(isvc, "examples/kserve-inferenceservice.yaml")
    explainer = isvc["spec"]["explainer"]
    (c,) = explainer["containers"]
    check(c["name"] == "kserve-container", "KServe: the custom container is kserve-container")
    env = env_of(c)
    check(env["STORAGE_URI"]["value"] == isvc["spec"]["predictor"]["model"]["storageUri"],
          "KServe: the explainer downloads the predictor's model")
    check(env["INTEGRAD_MODELS"]["value"] == "/mnt/models", "KServe: integrad reads /mnt/models")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(c["ports"][0]["name"] == "http1" and set(ports) == {"http1", "h2c"},
          f"KServe: the route's port (the first) is HTTP/1.1, gRPC beside it: {ports}")
    args = c["args"]
    check(args[args.index("--http_port") + 1] == str(ports["http1"]),
          "KServe: integrad's HTTP API listens on the route's port")
    check(args[args.index("--model_name") + 1] == isvc["metadata"]["name"],
          "KServe: /v1/models/<InferenceService name> reaches the default model")
    check(env["INTEGRAD_LISTEN"]["value"].endswith(f":{ports['h2c']}"), "KServe: gRPC on the h2c port")
    check_integrad_container(explainer, c, "examples/kserve-inferenceservice.yaml", ports["h2c"], tls=False,
                             injected_models=True)
    done.append("kserve-inferenceservice")
    return done


# ---------------------------------------------------------------- main


def main() -> None:
    report = {"helm_sdk": helm.helm_sdk_version(), "kube_versions": KUBE_VERSIONS, "scenarios": {}}
    scenario_files = sorted((CHART / "ci").glob("*-values.yaml"))
    found = {f.name.removesuffix("-values.yaml") for f in scenario_files}
    check(found == set(SCENARIOS), f"ci/ holds exactly the scenarios {sorted(SCENARIOS)}: {sorted(found)}")

    for path in [None, *scenario_files]:
        values = yaml.safe_load(path.read_text()) if path else None
        lint = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.34.0")
        problems = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
        check(not problems, f"helm lint {path.name if path else '(defaults)'}: {problems}")

    for path in scenario_files:
        name = path.name.removesuffix("-values.yaml")
        values = yaml.safe_load(path.read_text()) or {}
        objects = render(copy.deepcopy(values))
        for obj in objects:
            validate(obj, f"{name}: {obj['__source']}")
        pod, c = check_chart_pod(objects, values, name)
        SCENARIOS[name](objects, values, pod, c)
        report["scenarios"][name] = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
        if name == "batch-job":
            # For tests/it/helm.rs, which checks the rendered Job against these values too.
            report["batch_job"] = {"values": values["batchJob"],
                                   **check_batch_job(objects, values, name)}

    # The README's values table names every value (to the second level), so it cannot drift.
    rows = [line.split("|")[1] for line in (CHART / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    for key, value in defaults.items():
        named = [r for r in rows if f"`{key}`" in r or f"`{key}." in r]
        check(bool(named), f"README.md values table lacks {key}")
        if isinstance(value, dict) and key not in {"config", "podSecurityContext", "securityContext", "resources"}:
            for sub in value:
                check(any(f"`{key}.{sub}" in r or f"`.{sub}`" in r for r in named),
                      f"README.md values table lacks {key}.{sub}")

    report["health_port_variants"] = check_health_port_variants()
    report["batch_job_variants"] = check_batch_job_variants()
    report["rejected"] = check_rejections()
    report["examples"] = check_examples()
    report["checks"] = checks
    report["ok"] = True
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"chart check failed after {checks} checks: {e}", file=sys.stderr)
        sys.exit(1)
