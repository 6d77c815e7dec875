#!/usr/bin/env python3
"""Checks the deployment files against the code they deploy.

Schema validation is done by run.sh (check-jsonschema with the compose spec, kubernetes-validate);
this adds what a schema cannot know:

- every compose service has a healthcheck, and only nginx publishes ports beyond the loopback;
- every Kubernetes Deployment container has readiness and liveness probes and resource requests,
  and the HPA scales a Deployment that exists;
- every `passerelle <role>` flag used in compose.yml and deploy/k8s exists in that role's
  `--help`, and every PASSERELLE_* variable set is one the binary (or the image's entrypoint)
  reads;
- every passerelle_* metric named by the Grafana dashboard and the alert rules is registered
  somewhere in crates/*/src;
- no secret value is written into compose.yml;
- the nginx proxy snippet keeps response buffering off.

Needs PyYAML (check-jsonschema brings it) and the passerelle binary (--passerelle).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = {"serve", "gateway", "llm", "embeddings", "safety"}
# Read by deploy/docker-entrypoint.sh, not by the binary.
ENTRYPOINT_VARS = {"PASSERELLE_REDIS_PASSWORD_FILE", "PASSERELLE_BIN"}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)


def role_help(passerelle: Path, role: str, cache: dict[str, str] = {}) -> str:  # noqa: B006
    if role not in cache:
        cache[role] = subprocess.run(
            [str(passerelle), role, "--help"], capture_output=True, text=True, check=True,
            timeout=30,
        ).stdout
    return cache[role]


def check_command(where: str, command: list[str], env: dict[str, str], passerelle: Path) -> None:
    if not command or command[0] not in ROLES:
        fail(f"{where}: command {command[:1]} is not a passerelle role")
        return
    role = command[0]
    help_text = role_help(passerelle, role)
    for arg in command[1:]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if not re.search(rf"(^|\s){re.escape(flag)}[\s\[<=]", help_text, re.MULTILINE):
                fail(f"{where}: `passerelle {role}` has no flag {flag}")
    for name in env:
        if not name.startswith("PASSERELLE_") or name in ENTRYPOINT_VARS:
            continue
        base = name[: -len("_FILE")] if name.endswith("_FILE") else name
        if f"[env: {base}" not in help_text:
            fail(f"{where}: `passerelle {role}` reads no variable {base}")


def check_compose(passerelle: Path) -> None:
    compose = yaml.safe_load((REPO / "compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        where = f"compose.yml service {name}"
        health = service.get("healthcheck")
        if not health or health.get("disable") or not health.get("test"):
            fail(f"{where}: no healthcheck")
        for port in service.get("ports", []):
            if name != "nginx" and not str(port).startswith("127.0.0.1:"):
                fail(f"{where}: publishes {port} beyond the loopback (only nginx may)")
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            if re.search(r"PASSWORD$|SECRET$|TOKEN$|API_KEYS$", key) and value:
                fail(f"{where}: {key} is set inline; use a secret file")
            if isinstance(value, str) and re.search(r"redis://:[^@$]+@", value):
                fail(f"{where}: {key} carries a Redis password inline")
        image = str(service.get("image", ""))
        if "PASSERELLE" in image and "IMAGE" in image:
            check_command(where, list(service.get("command", [])), env, passerelle)
    if not any("gpu" in s.get("profiles", []) for s in services.values()):
        fail("compose.yml: no gpu profile")
    for name in ("prometheus", "grafana", "otel-collector", "jaeger"):
        if "observability" not in services.get(name, {}).get("profiles", []):
            fail(f"compose.yml: {name} is not in the observability profile")
    redis = " ".join(services["redis"]["command"])
    if "--appendonly yes" not in redis:
        fail("compose.yml: Redis runs without the append-only file")


def check_k8s(passerelle: Path) -> None:
    documents = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                documents.append((path.name, doc))
    deployments = set()
    for file, doc in documents:
        if doc.get("kind") != "Deployment":
            continue
        name = doc["metadata"]["name"]
        deployments.add(name)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            where = f"{file} Deployment {name} container {container['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    fail(f"{where}: no {probe}")
            if not container.get("resources", {}).get("requests"):
                fail(f"{where}: no resource requests")
            env = {item["name"]: item.get("value", "") for item in container.get("env", [])}
            check_command(where, container.get("args", []), env, passerelle)
    hpas = [doc for _, doc in documents if doc.get("kind") == "HorizontalPodAutoscaler"]
    if not any(h["spec"]["scaleTargetRef"]["name"] == "gateway" for h in hpas):
        fail("deploy/k8s: no HorizontalPodAutoscaler on the gateway")
    for hpa in hpas:
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail(f"deploy/k8s: HPA {hpa['metadata']['name']} targets a missing Deployment")
    headless = {
        doc["metadata"]["name"]
        for _, doc in documents
        if doc.get("kind") == "Service" and doc["spec"].get("clusterIP") == "None"
    }
    for service in ("llm", "embeddings", "safety"):
        if service not in headless:
            fail(f"deploy/k8s: {service} has no headless Service")


def registered_metrics() -> set[str]:
    names = set()
    for path in REPO.glob("crates/*/src/**/*.rs"):
        names.update(re.findall(r'"(passerelle_[a-z0-9_]+)"', path.read_text()))
    return names


def used_metrics(text: str) -> set[str]:
    found = set(re.findall(r"\b(passerelle_[a-z0-9_]+)", text))
    # Histogram series carry suffixes the code does not spell out.
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in found}


def check_metrics() -> None:
    known = registered_metrics()
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/passerelle.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    sources = {
        "deploy/grafana/dashboards/passerelle.json": "\n".join(exprs),
        "deploy/prometheus/alerts.yml": "\n".join(
            rule["expr"]
            for group in yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
            for rule in group["rules"]
        ),
    }
    for source, text in sources.items():
        for name in sorted(used_metrics(text) - known):
            fail(f"{source}: metric {name} is not registered by any crate")
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("requests", "error", "latency", "first token", "tokens per second", "cache",
                  "blocked", "rate-limited", "queue"):
        if topic not in titles:
            fail(f"deploy/grafana: no panel about {topic}")
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    for alert in ("PasserellePromptDrift", "PasserelleHighLatencyP95", "PasserelleHighErrorRate",
                  "PasserelleRedisUnreachable"):
        if alert not in alerts:
            fail(f"deploy/prometheus/alerts.yml: no {alert}")


def check_nginx() -> None:
    proxy = (REPO / "deploy/nginx/snippets/proxy-gateway.conf").read_text()
    if not re.search(r"^proxy_buffering off;", proxy, re.MULTILINE):
        fail("deploy/nginx: proxy_buffering is not off for the gateway (SSE would be delayed)")
    tls = (REPO / "deploy/nginx/snippets/tls.conf").read_text()
    if not re.search(r"^ssl_protocols TLSv1\.2 TLSv1\.3;", tls, re.MULTILINE):
        fail("deploy/nginx: ssl_protocols is not TLSv1.2 TLSv1.3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passerelle", type=Path, required=True, help="the passerelle binary")
    args = parser.parse_args()
    check_compose(args.passerelle)
    check_k8s(args.passerelle)
    check_metrics()
    check_nginx()
    for message in failures:
        print(f"[manifests] {message}", file=sys.stderr)
    if failures:
        print(f"[manifests] FAILED: {len(failures)} problem(s)", file=sys.stderr)
        return 1
    print("[manifests] compose, Kubernetes, dashboard, alerts and nginx checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
