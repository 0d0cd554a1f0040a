#!/usr/bin/env bash
# Checks the deployment packaging in deploy/ offline (no cluster, no Docker, no network):
# - renders every kustomization (kubernetes/base, kubernetes/overlays/*) with kubectl kustomize;
# - validates each resource file and each rendered document against the Kubernetes API
#   schemas (kubernetes-validate, strict: unknown fields fail too);
# - cross-checks the manifests with each other, with the Dockerfile and with the binary's
#   `serve --help`: variables and flags, ports and probes, the drain timeout against the
#   grace period, GPUs against BORSCHT_DEVICE, the HPA's metric against the adapter rule;
# - lints deploy/Dockerfile (hadolint) and checks that what its steps name exists: copied
#   paths (and that .dockerignore keeps them), scripts, packages, features, stages.
#
#   scripts/check-deploy.sh [BORSCHT_BINARY]    (default target/debug/borscht)
#
# BORSCHT_DEPLOY_DIR checks another copy of deploy/ (the tests break copies on purpose);
# the Docker build context stays the repository root. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The newest schemas kubernetes-validate 1.37.0 bundles (its --help names the default).
KUBERNETES_VERSION=1.37.0
binary="${1:-$REPO_ROOT/target/debug/borscht}"
deploy_dir="${BORSCHT_DEPLOY_DIR:-$REPO_ROOT/deploy}"
tools="$BORSCHT_TOOLS_DIR/deploy-tools/bin"

die() { echo "check-deploy: $*" >&2; exit 1; }
for tool in python3 kubectl kubernetes-validate; do
  [ -x "$tools/$tool" ] || die "no $tool in $tools: run scripts/install-tools.sh"
done
[ -x "$binary" ] || die "no borscht binary at $binary: build it (cargo build -p borscht) or pass its path"
[ -f "$deploy_dir/Dockerfile" ] && [ -d "$deploy_dir/kubernetes" ] || die "$deploy_dir has no Dockerfile and kubernetes/"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$binary" serve --help >"$work/serve-help.txt" 2>&1 || die "$binary serve --help failed: $(cat "$work/serve-help.txt")"

hadolint_failed=0
if [ -x "$tools/hadolint" ]; then
  if "$tools/hadolint" --no-color "$deploy_dir/Dockerfile" >"$work/hadolint.txt" 2>&1; then
    echo "ok: deploy/Dockerfile passes hadolint"
  else
    sed "s|^$deploy_dir/|deploy/|; s|^|FAIL: hadolint: |" "$work/hadolint.txt"
    hadolint_failed=1
  fi
else
  echo "skip: hadolint is not installed (scripts/install-tools.sh installs it)"
fi

set +e
"$tools/python3" - "$REPO_ROOT" "$deploy_dir" "$tools" "$binary" "$KUBERNETES_VERSION" "$work" <<'PY'
import fnmatch, os, re, subprocess, sys, tomllib
import yaml

repo, deploy, tools, binary, kube_version, work = sys.argv[1:]
kube = os.path.join(deploy, "kubernetes")
failures = 0


def ok(message):
    print(f"ok: {message}")


def fail(where, message):
    global failures
    failures += 1
    print(f"FAIL: {where}: {message}")


def shown(path):
    """A path as the messages name it: deploy/... whichever copy of deploy/ is checked."""
    return "deploy/" + os.path.relpath(path, deploy)


# --- what the binary accepts: `serve --help` ---
help_text = open(os.path.join(work, "serve-help.txt")).read()
flags, env_vars, defaults = set(), set(), {}
for block in re.split(r"\n(?=\s+(?:-\w, )?--)", help_text):
    flag = re.match(r"\s+(?:-\w, )?(--[\w-]+)", block)
    if not flag:
        continue
    flags.add(flag.group(1))
    env = re.search(r"\[env: (\w+)=[^\]]*\]", block)
    default = re.search(r"\[default: ([^\]]*)\]", block)
    if env:
        env_vars.add(env.group(1))
        defaults[env.group(1)] = (flag.group(1), default.group(1) if default else None)
if "BORSCHT_DRAIN_TIMEOUT_S" not in env_vars:
    fail(binary, "`serve --help` lists no BORSCHT_DRAIN_TIMEOUT_S: is this borscht?")
binary_bytes = open(binary, "rb").read()


def setting(container, name):
    """A serve setting as the container gets it: its flag in args, else its env, else the default."""
    flag, default = defaults.get(name, (None, None))
    args = [str(a) for a in container.get("args") or []]
    for i, arg in enumerate(args):
        if flag and arg == flag and i + 1 < len(args):
            return args[i + 1]
        if flag and arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    for env in container.get("env") or []:
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    return default


# --- the Dockerfile: stages and what their steps name ---
dockerfile = os.path.join(deploy, "Dockerfile")
instructions, logical = [], ""
for line in open(dockerfile).read().splitlines():
    if line.lstrip().startswith("#"):
        continue
    logical += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        logical = ""
args_defaults, stages = {}, {}
current = None
for word, rest in instructions:
    if word == "ARG" and current is None:
        name, _, value = rest.partition("=")
        args_defaults[name] = value
    elif word == "FROM":
        parts = rest.split()
        current = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
        stages[current] = {"steps": [], "env": {}, "copies": {}}
    elif current is not None:
        stages[current]["steps"].append((word, rest))
        if word == "ENV":
            stages[current]["env"].update(re.findall(r"(\w+)=(\S+)", rest))
dockerignore_path = os.path.join(repo, ".dockerignore")
dockerignore = [l.strip() for l in open(dockerignore_path)] if os.path.exists(dockerignore_path) else []
dockerignore = [l for l in dockerignore if l and not l.startswith("#")]


def ignored(path):
    """Whether .dockerignore leaves a context path out (Docker's rule: the last matching pattern wins)."""
    verdict = False
    parts = path.split("/")
    for pattern in dockerignore:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


workspace = tomllib.load(open(os.path.join(repo, "Cargo.toml"), "rb"))
packages, cargo_needs = {}, ["Cargo.toml", "Cargo.lock"]
for member in workspace["workspace"]["members"]:
    manifest = tomllib.load(open(os.path.join(repo, member, "Cargo.toml"), "rb"))
    packages[manifest["package"]["name"]] = manifest
    # What cargo reads of every member even to build one package.
    cargo_needs += [f"{member}/Cargo.toml", f"{member}/src"]
    cargo_needs += [b.get("path", f"{member}/benches/{b['name']}.rs") for b in manifest.get("bench", [])]
for stage_name in ("runtime-cpu", "runtime-cuda"):
    if stage_name not in stages:
        fail("deploy/Dockerfile", f"no stage {stage_name} (docker build --target {stage_name})")
for name, stage in stages.items():
    where = f"deploy/Dockerfile, stage {name}"
    for word, rest in stage["steps"]:
        if word in ("COPY", "ADD"):
            options = dict(re.findall(r"--(\w+)=(\S+)", rest))
            words = [w for w in rest.split() if not w.startswith("--")]
            sources, dest = words[:-1], words[-1]
            stage["copies"][dest.rstrip("/")] = (options.get("from"), sources)
            if "from" in options:
                if options["from"] not in stages and ":" not in options["from"]:
                    fail(where, f"COPY --from={options['from']}: no such stage")
                continue
            for source in sources:
                if source == ".":
                    for path in cargo_needs:
                        if ignored(path):
                            fail(where, f"COPY .: .dockerignore leaves out {path}, which cargo reads")
                    continue
                full = os.path.join(repo, source)
                if not os.path.exists(full):
                    fail(where, f"COPY {source}: not in the repository")
                    continue
                files = [full] if os.path.isfile(full) else [os.path.join(d, f) for d, _, fs in os.walk(full) for f in fs]
                left_out = [os.path.relpath(f, repo) for f in files if ignored(os.path.relpath(f, repo))]
                if left_out:
                    fail(where, f"COPY {source}: .dockerignore leaves out {', '.join(left_out[:3])}")
        elif word == "RUN":
            for sourced, script in re.findall(r"(\. |source )?(?<![\w/])(scripts/[\w./-]+)", rest):
                path = os.path.join(repo, script)
                if not os.path.isfile(path) or not (sourced or os.access(path, os.X_OK)):
                    fail(where, f"RUN {script}: no such {'file' if sourced else 'executable script'}")
            if "cargo build" in rest:
                package = re.search(r"-p (\S+)", rest)
                package = package.group(1) if package else None
                if package not in packages:
                    fail(where, f"cargo build -p {package}: no such workspace package")
                    continue
                for feature in re.findall(r"--features (\S+)", rest):
                    for f in feature.split(","):
                        if f not in packages[package].get("features", {}):
                            fail(where, f"cargo build --features {f}: package {package} has no such feature")
                for binary_name in re.findall(r"--bin (\S+)", rest):
                    if binary_name not in [b["name"] for b in packages[package].get("bin", [])]:
                        fail(where, f"cargo build --bin {binary_name}: package {package} has no such binary")
        elif word == "ENV" and name.startswith("runtime-"):
            for key in re.findall(r"(BORSCHT_\w+)=", rest):
                if key not in env_vars:
                    fail(where, f"ENV {key}: `borscht serve --help` lists no such variable")
rust_version = tuple(map(int, args_defaults.get("RUST_VERSION", "0").split(".")[:2]))
wanted = tuple(map(int, workspace["workspace"]["package"]["rust-version"].split(".")[:2]))
if rust_version < wanted:
    fail("deploy/Dockerfile", f"RUST_VERSION {args_defaults.get('RUST_VERSION')} is older than the workspace's rust-version")
runtime = {}
for name in ("runtime-cpu", "runtime-cuda"):
    stage = stages.get(name)
    if not stage:
        continue
    where = f"deploy/Dockerfile, stage {name}"
    env = stage["env"]
    for key in ("BORSCHT_WEB_DIR", "BORSCHT_MODEL"):
        if env.get(key) not in stage["copies"]:
            fail(where, f"{key}={env.get(key)} is no path this stage copies in")
    model = stage["copies"].get(env.get("BORSCHT_MODEL"), (None, []))
    if model[0] is None and not all(os.path.exists(os.path.join(repo, s, "config.json")) for s in model[1]):
        fail(where, f"the model copied to {env.get('BORSCHT_MODEL')} has no config.json")
    exposed = [rest for word, rest in stage["steps"] if word == "EXPOSE"]
    port = env.get("BORSCHT_ADDR", "").rpartition(":")[2]
    if exposed != [port]:
        fail(where, f"EXPOSE {' '.join(exposed)} does not match BORSCHT_ADDR={env.get('BORSCHT_ADDR')}")
    if "/usr/local/bin/borscht" not in stage["copies"]:
        fail(where, "copies no binary to /usr/local/bin/borscht (its ENTRYPOINT)")
    user = [rest for word, rest in stage["steps"] if word == "USER"]
    runtime[name] = {"env": env, "port": port, "user": user[-1].split(":")[0] if user else "0"}
if not failures:
    ok(f"deploy/Dockerfile: stages {', '.join(s for s in stages if not s.startswith('#'))}; what they copy and run exists")


# --- the kustomizations ---
def load_yaml(path):
    try:
        return [d for d in yaml.safe_load_all(open(path)) if d]
    except yaml.YAMLError as e:
        fail(shown(path), f"not YAML: {e}")
        return []


def kustomization(directory):
    path = os.path.join(directory, "kustomization.yaml")
    docs = load_yaml(path) if os.path.exists(path) else []
    return docs[0] if docs else {}


def dirs_of(directory):
    """The kustomization's directory and those of the bases it includes."""
    found = [directory]
    for resource in kustomization(directory).get("resources") or []:
        path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            found += dirs_of(path)
    return found


def validate(path, label, sources=None):
    """Schema-checks a file; a rendered one's failures also name the files behind the object."""
    result = subprocess.run([os.path.join(tools, "kubernetes-validate"), "--strict", "--quiet",
                             "-k", kube_version, path], capture_output=True, text=True)
    out = (result.stdout + result.stderr).replace(path, label).strip()
    if result.returncode != 0 or "ERROR" in out or "Couldn't find schema" in out:
        behind = sorted({f for kind, name in re.findall(r"resource (\w+)/(\S+)", out)
                         for (k, n), files in (sources or {}).items() if (k.lower(), n) == (kind, name) for f in files})
        fail(", ".join(behind + [label]), f"not valid for Kubernetes {kube_version}: {out}")
        return False
    return True


targets = []
if os.path.exists(os.path.join(kube, "base", "kustomization.yaml")):
    targets.append("base")
overlays = os.path.join(kube, "overlays")
for overlay in sorted(os.listdir(overlays)) if os.path.isdir(overlays) else []:
    if os.path.exists(os.path.join(overlays, overlay, "kustomization.yaml")):
        targets.append(f"overlays/{overlay}")
for required in ("base", "overlays/gpu"):
    if required not in targets:
        fail(f"deploy/kubernetes/{required}", "no kustomization.yaml")

validated, base_image = set(), None
for target in targets:
    directory = os.path.join(kube, target)
    for d in dirs_of(directory):
        for resource in kustomization(d).get("resources") or []:
            path = os.path.normpath(os.path.join(d, resource))
            if os.path.isfile(path) and path not in validated:
                validated.add(path)
                if validate(path, shown(path)):
                    ok(f"{shown(path)} is valid for Kubernetes {kube_version}")
    render = subprocess.run([os.path.join(tools, "kubectl"), "kustomize", directory], capture_output=True, text=True)
    if render.returncode != 0:
        fail(shown(directory), f"kubectl kustomize: {render.stderr.strip()}")
        continue

    # Each object's messages name the files that define or patch it.
    sources = {}
    for d in reversed(dirs_of(directory)):
        for f in sorted(os.listdir(d)):
            if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml":
                for doc in load_yaml(os.path.join(d, f)):
                    if isinstance(doc, dict) and "kind" in doc:
                        key = (doc["kind"], (doc.get("metadata") or {}).get("name"))
                        sources.setdefault(key, []).append(shown(os.path.join(d, f)))

    rendered = os.path.join(work, target.replace("/", "-") + ".yaml")
    open(rendered, "w").write(render.stdout)
    if not validate(rendered, f"{target} (rendered)", sources):
        continue
    docs = [d for d in yaml.safe_load_all(render.stdout) if d]
    ok(f"{target} renders {len(docs)} objects, all valid for Kubernetes {kube_version}")

    def where(obj):
        key = (obj["kind"], obj["metadata"]["name"])
        return f"{', '.join(sources.get(key, [target]))}: {key[0]}/{key[1]} in {target}"

    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        fail(target, f"{len(deployments)} Deployments, expected one")
        continue
    deployment = deployments[0]
    here = where(deployment)
    pod = deployment["spec"]["template"]
    containers = [c for c in pod["spec"]["containers"] if c["name"] == "borscht"]
    if not containers:
        fail(here, "no container named borscht")
        continue
    container = containers[0]
    if target == "base":
        base_image = container.get("image")

    # Variables and flags the binary takes.
    args = [str(a) for a in container.get("args") or []]
    if args[:1] != ["serve"]:
        fail(here, f"args {args} do not start with the serve command")
    for arg in args[1:]:
        if arg.startswith("--") and arg.split("=")[0] not in flags:
            fail(here, f"flag {arg.split('=')[0]}: `borscht serve --help` lists no such flag")
    for env in container.get("env") or []:
        name = env["name"]
        if not name.startswith("BORSCHT_") or name in env_vars:
            continue
        # Logging (BORSCHT_LOG, BORSCHT_LOG_FORMAT) is every command's, not a serve flag.
        if name.encode() not in binary_bytes or any(v.startswith(name) for v in env_vars):
            fail(here, f"{name}: `borscht serve --help` lists no such variable and the binary reads none")

    # Address, ports, probes.
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    addr = setting(container, "BORSCHT_ADDR") or ""
    host, _, port = addr.rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        fail(here, f"BORSCHT_ADDR={addr}: listens on {host or '?'} only, out of the Service's reach")
    if not port.isdigit() or int(port) not in ports.values():
        fail(here, f"BORSCHT_ADDR={addr}: its port is not a containerPort ({sorted(ports.values())})")

    def resolve(port_ref):
        return ports.get(port_ref) if isinstance(port_ref, str) else port_ref if port_ref in ports.values() else None

    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        spec = container.get(probe)
        if not spec or "httpGet" not in spec:
            fail(here, f"no {probe} (httpGet {path})")
            continue
        got = spec["httpGet"]
        if got.get("path") != path:
            fail(here, f"{probe} asks {got.get('path')}, not {path}")
        if resolve(got.get("port")) is None or str(resolve(got.get("port"))) != port:
            fail(here, f"{probe} port {got.get('port')!r} is not the server's port ({port}, named {', '.join(str(n) for n in ports if n)})")
    startup = container.get("startupProbe") or {}
    window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if window < 120:
        fail(here, f"startupProbe allows {window} s for loading the model: give it at least 120")

    # Drain: SIGTERM comes after the preStop sleep; the grace period covers both and the exit.
    drain = setting(container, "BORSCHT_DRAIN_TIMEOUT_S")
    pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre_stop:
        sleep = pre_stop["sleep"].get("seconds", 0)
    else:
        command = " ".join(str(c) for c in (pre_stop.get("exec") or {}).get("command") or [])
        sleep = int(re.search(r"sleep (\d+)", command).group(1)) if re.search(r"sleep (\d+)", command) else 0
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if not (drain or "").isdigit():
        fail(here, f"BORSCHT_DRAIN_TIMEOUT_S={drain!r} is not a number of seconds")
    elif sleep < 1:
        fail(here, "no preStop sleep: SIGTERM would come before the proxies stop sending")
    else:
        margin = grace - sleep - int(drain)
        if 5 <= margin <= 30:
            ok(f"{target}: terminationGracePeriodSeconds {grace} = preStop sleep {sleep} s"
               f" + BORSCHT_DRAIN_TIMEOUT_S {drain} s + {margin} s to exit")
        else:
            fail(here, f"terminationGracePeriodSeconds {grace} does not fit preStop sleep {sleep} s"
                 f" + BORSCHT_DRAIN_TIMEOUT_S {drain} s + 5 to 30 s to exit")

    # The image's paths, port and user.
    for name, image in runtime.items():
        if not image["port"].isdigit() or int(image["port"]) not in ports.values():
            fail(here, f"no containerPort {image['port']}, where the {name} image listens")
        for key in ("BORSCHT_WEB_DIR", "BORSCHT_MODEL"):
            if setting(container, key) != image["env"].get(key):
                fail(here, f"{key}={setting(container, key)} but the {name} image has {image['env'].get(key)}")
        user = (container.get("securityContext") or {}).get("runAsUser", pod["spec"].get("securityContext", {}).get("runAsUser"))
        if user is not None and str(user) != image["user"]:
            fail(here, f"runAsUser {user} but the {name} image's USER is {image['user']}")

    # GPUs: as many as BORSCHT_DEVICE names, and the taint GPU nodes carry tolerated.
    device = setting(container, "BORSCHT_DEVICE") or "cpu"
    cuda = [d for d in device.split(",") if d.startswith("cuda")]
    gpus = int(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    needed = max([int(d.partition(":")[2] or 0) + 1 for d in cuda] + [len(cuda)])
    tolerated = any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"].get("tolerations") or [])
    if cuda and gpus < needed:
        fail(here, f"BORSCHT_DEVICE={device} needs nvidia.com/gpu: {needed} in limits, has {gpus}")
    elif gpus and not cuda:
        fail(here, f"nvidia.com/gpu: {gpus} but BORSCHT_DEVICE={device} leaves it idle")
    elif cuda and not tolerated:
        fail(here, "no toleration for the nvidia.com/gpu taint")
    elif cuda:
        ok(f"{target}: BORSCHT_DEVICE={device} on nvidia.com/gpu: {gpus} (limits), tolerating nvidia.com/gpu")
    if target == "overlays/gpu":
        if not cuda:
            fail(here, f"the GPU overlay runs BORSCHT_DEVICE={device}")
        if container.get("image") == base_image:
            fail(here, f"the GPU overlay keeps the CPU image {base_image}")

    labels = pod["metadata"].get("labels") or {}

    def selects(selector):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    # Service, Ingress, PodDisruptionBudget.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for service in services.values():
        if not selects(service["spec"].get("selector")):
            fail(where(service), "its selector does not select the Deployment's pods")
        for p in service["spec"].get("ports", []):
            if resolve(p.get("targetPort", p["port"])) is None:
                fail(where(service), f"targetPort {p.get('targetPort')!r} is no container port")
    ingresses = by_kind.get("Ingress", [])
    client_ip = setting(container, "BORSCHT_CLIENT_IP_HEADER")
    if ingresses and (client_ip or "").lower() != "x-forwarded-for":
        fail(here, f"behind ingress-nginx, BORSCHT_CLIENT_IP_HEADER must be X-Forwarded-For (is {client_ip})")
    if client_ip and not ingresses:
        fail(here, f"BORSCHT_CLIENT_IP_HEADER={client_ip} without a proxy: clients could claim any address")
    idle = int(setting(container, "BORSCHT_IDLE_TIMEOUT_S") or 0)
    upload = int(setting(container, "BORSCHT_MAX_UPLOAD_BYTES") or 0)
    for ingress in ingresses:
        notes = ingress["metadata"].get("annotations") or {}
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = notes.get(f"nginx.ingress.kubernetes.io/{key}", "60")
            if not str(value).isdigit() or int(value) < idle:
                fail(where(ingress), f"{key} {value} s cuts idle WebSockets before the server's {idle} s")
        body = str(notes.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m"))
        size = re.fullmatch(r"(\d+)([kKmMgG]?)", body)
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        if not size or (int(size.group(1)) and int(size.group(1)) * scale[size.group(2).lower()] < upload + (64 << 10)):
            fail(where(ingress), f"proxy-body-size {body} is under BORSCHT_MAX_UPLOAD_BYTES ({upload}) and a form's overhead")
        for rule in ingress["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                backend = p["backend"]["service"]
                service = services.get(backend["name"])
                port_ref = backend["port"].get("name", backend["port"].get("number"))
                if not service or port_ref not in [v for sp in service["spec"]["ports"] for v in (sp.get("name"), sp["port"])]:
                    fail(where(ingress), f"backend {backend['name']}:{port_ref} is no Service port here")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"].get("selector", {}).get("matchLabels")):
            fail(where(pdb), "its selector does not select the Deployment's pods")

    # Autoscaling on the queue: the metric the adapter rule exposes, which the server exports.
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
            fail(where(hpa), f"scales {ref['kind']}/{ref['name']}, not the Deployment")
        if "replicas" in deployment["spec"]:
            fail(here, "sets replicas, which every apply would reset under the autoscaler")
        rules_files = [os.path.join(d, "prometheus-adapter-rules.yaml") for d in dirs_of(directory)]
        rules = [r for f in rules_files if os.path.exists(f) for doc in load_yaml(f) for r in doc.get("rules", [])]
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] != "Pods":
                continue
            name = metric["pods"]["metric"]["name"]
            exposing = [r for r in rules if (r.get("name") or {}).get("as", r.get("seriesQuery", "").split("{")[0]) == name]
            if not exposing:
                fail(where(hpa), f"no rule in prometheus-adapter-rules.yaml exposes the pods metric {name}")
            for rule in exposing:
                overrides = {v.get("resource") for v in ((rule.get("resources") or {}).get("overrides") or {}).values()}
                if not {"namespace", "pod"} <= overrides:
                    fail(where(hpa), f"the adapter rule for {name} does not map the namespace and pod labels")
            series = name.removeprefix("borscht_")
            if not name.startswith("borscht_") or series.encode() not in binary_bytes:
                fail(where(hpa), f"{name}: the server exports no such metric")
            if exposing and name.startswith("borscht_") and series.encode() in binary_bytes:
                ok(f"{target}: the autoscaler scales on {name}, which the adapter rule exposes")

print(f"check-deploy: {failures} failure(s)" if failures else "check-deploy: python checks passed")
sys.exit(1 if failures else 0)
PY
python_status=$?
set -e

if [ "$python_status" -ne 0 ] || [ "$hadolint_failed" -ne 0 ]; then
  echo "check-deploy: FAILED (see the FAIL lines above)" >&2
  exit 1
fi
echo "check-deploy: all checks passed"
