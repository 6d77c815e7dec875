#!/usr/bin/env python3
"""The shipped nginx configuration, for real: nginx -t, then nginx in front of `passerelle serve`.

Renders deploy/nginx/templates/passerelle.conf.template the way the nginx image does (only the
listed ${VARIABLES} are replaced), with loopback ports and a certificate made here, wraps it in a
test-only main configuration (pid, logs and temp files in a temporary directory, nginx running as
the current user), and checks through it:

- nginx -t accepts the configuration;
- a streamed chat completion over HTTPS arrives chunk by chunk (nothing buffers the SSE stream);
- HTTP redirects to HTTPS except the ACME http-01 challenge, which is served from the webroot;
- security headers, the body limit (413 at the edge), /metrics not published, edge rate limit;
- sslyze: no SSL 2/3, no TLS 1.0/1.1, only strong forward-secret AEAD suites in TLS 1.2, TLS 1.3 on.

Needs: nginx, python3 with sslyze (which brings `cryptography`), the passerelle and
passerelle-testkit binaries (given by --bin-dir). Binds 127.0.0.1 only; stops what it started.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"
API_KEY = "psk-nginx-e2e"
MODEL_ID = "tiny"
DOMAIN = "localhost"
# Edge limits for the test: generous enough for the checks, small enough to trip on purpose.
REQ_BURST = 30


def log(message: str) -> None:
    print(f"[nginx-e2e] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


# --- certificates -------------------------------------------------------------------------------


def write_certificates(cert_dir: Path) -> Path:
    """A throwaway CA and a leaf for localhost/127.0.0.1, laid out like certbot's live/ folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "passerelle test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(DOMAIN), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_dir.mkdir(parents=True)
    (cert_dir / "privkey.pem").write_bytes(
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (cert_dir / "fullchain.pem").write_bytes(leaf_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    (cert_dir / "chain.pem").write_bytes(ca_cert.public_bytes(pem))
    return cert_dir / "chain.pem"


# --- configuration ------------------------------------------------------------------------------


def render_template(text: str, variables: dict[str, str]) -> str:
    """What the nginx image's envsubst step does: replace only the listed ${NAME}s."""
    rendered = re.sub(
        r"\$\{([A-Z0-9_]+)\}",
        lambda m: variables[m.group(1)] if m.group(1) in variables else m.group(0),
        text,
    )
    left = sorted(set(re.findall(r"\$\{[A-Z0-9_]+\}", rendered)))
    if left:
        raise SystemExit(f"template variables without a test value: {left}")
    return rendered


def write_nginx_config(work: Path, http_port: int, https_port: int, upstream: str,
                       cert_dir: Path, webroot: Path) -> Path:
    conf = work / "nginx"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "snippets").mkdir()
    for snippet in (NGINX_DIR / "snippets").glob("*.conf"):
        (conf / "snippets" / snippet.name).write_text(snippet.read_text())
    template = (NGINX_DIR / "templates" / "passerelle.conf.template").read_text()
    (conf / "conf.d" / "passerelle.conf").write_text(
        render_template(
            template,
            {
                "PASSERELLE_DOMAIN": DOMAIN,
                "PASSERELLE_UPSTREAM": upstream,
                "NGINX_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "NGINX_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
                "TLS_CERT_DIR": str(cert_dir),
                "ACME_WEBROOT": str(webroot),
                "NGINX_RESOLVER": "127.0.0.1",
                "NGINX_REQ_RATE": "5r/s",
                "NGINX_REQ_BURST": str(REQ_BURST),
                "NGINX_CONN_LIMIT": "16",
            },
        )
    )
    # The shipped main file (deploy/nginx/nginx.conf) sets user, pid and log paths for the
    # container; this one puts them in the temp dir and keeps its http-level settings.
    temp = work / "nginx-temp"
    user = "user root;\n" if os.geteuid() == 0 else ""
    (conf / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    server_tokens off;
    access_log {work}/nginx-access.log;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    tcp_nodelay on;
    gzip off;
    include conf.d/passerelle.conf;
}}
"""
    )
    temp.mkdir()
    return conf / "nginx.conf"


# --- HTTP helpers -------------------------------------------------------------------------------


class Https:
    """HTTPS requests to nginx, with SNI and verification against the test CA."""

    def __init__(self, port: int, ca_file: Path) -> None:
        self.port = port
        self.ca_file = ca_file
        self.context = ssl.create_default_context(cafile=str(ca_file))

    def connection(self) -> http.client.HTTPSConnection:
        # Connect to 127.0.0.1 while SNI and verification use the domain.
        conn = http.client.HTTPSConnection(DOMAIN, self.port, context=self.context, timeout=30)
        conn.sock = self.context.wrap_socket(
            socket.create_connection(("127.0.0.1", self.port), timeout=30),
            server_hostname=DOMAIN,
        )
        return conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def chat_body(max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": MODEL_ID,
            "stream": True,
            "max_tokens": max_tokens,
            "seed": 7,
            "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        }
    ).encode()


def stream_arrivals(conn: http.client.HTTPConnection, body: bytes, on_first=None) -> list[float]:
    """Sends a streamed chat and returns each SSE event's arrival time, from the request."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    started = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"streamed chat answered {response.status}: {response.read()[:500]!r}")
    if "text/event-stream" not in (response.getheader("content-type") or ""):
        raise SystemExit(f"not an SSE stream: {response.getheader('content-type')}")
    arrivals: list[float] = []
    done = False
    # readline() returns as soon as a line is complete: it does not wait for more data.
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            arrivals.append(time.monotonic() - started)
            if len(arrivals) == 1 and on_first is not None:
                on_first()
            if line.strip() == b"data: [DONE]":
                done = True
    conn.close()
    if not done:
        raise SystemExit("the stream ended without data: [DONE]")
    return arrivals


# --- checks -------------------------------------------------------------------------------------


def llm_active_requests(gateway_port: int) -> int:
    """Generations running in the llm service now, from the gateway's own /metrics (serve mode
    renders the llm service's metrics there)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(r"^passerelle_llm_active_requests (\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit("passerelle_llm_active_requests missing from /metrics")
    return int(match.group(1))


def check_streaming(https: Https, gateway_port: int) -> None:
    """The first SSE event reaches the client through nginx while the generation still runs,
    long before the last one: a buffering proxy (or a gateway that does not flush) would deliver
    them only once the generation ended. Timings are compared within this one stream only, so
    a loaded machine does not make the check flaky."""
    observed: dict[str, int] = {}
    arrivals = stream_arrivals(
        https.connection(), chat_body(1500),
        on_first=lambda: observed.setdefault("active", llm_active_requests(gateway_port)),
    )
    first, last = arrivals[0], arrivals[-1]
    span = last - first
    halfway = sorted(arrivals)[len(arrivals) // 2]
    log(
        f"through nginx: {len(arrivals)} events, first at {first:.3f}s, half by {halfway:.3f}s, "
        f"last at {last:.3f}s; generations running when the first arrived: {observed['active']}"
    )
    if len(arrivals) < 50 or span < 0.2:
        raise SystemExit(f"{len(arrivals)} events over {span:.3f}s: too short to tell buffering apart")
    if observed["active"] < 1:
        raise SystemExit("the first SSE event only arrived after the generation had ended: buffered")
    if first > 0.2 * last:
        raise SystemExit(f"first SSE event at {first:.3f}s of {last:.3f}s: the stream is held back")
    log("streaming through nginx: events arrive as they are generated (no buffering)")


def check_http_side(http_port: int, webroot: Path) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    conn.request("GET", "/v1/models?x=1", headers={"Host": DOMAIN})
    response = conn.getresponse()
    response.read()
    location = response.getheader("location") or ""
    if response.status != 301 or location != f"https://{DOMAIN}/v1/models?x=1":
        raise SystemExit(f"HTTP should redirect to HTTPS, got {response.status} {location!r}")
    token = "acme-token-" + os.urandom(6).hex()
    challenge = webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / token).write_text("key-authorization")
    conn.request("GET", f"/.well-known/acme-challenge/{token}", headers={"Host": DOMAIN})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or body != b"key-authorization":
        raise SystemExit(f"ACME challenge not served over HTTP: {response.status} {body[:100]!r}")
    conn.close()
    log("HTTP: redirects to HTTPS, serves the ACME http-01 challenge from the webroot")


def check_https_basics(https: Https) -> None:
    status, headers, body = https.request("GET", "/health/ready")
    if status != 200 or json.loads(body).get("status") != "ready":
        raise SystemExit(f"/health/ready through nginx: {status} {body[:200]!r}")
    expected = {
        "strict-transport-security": "max-age=63072000; includeSubDomains",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }
    for name, value in expected.items():
        if headers.get(name) != value:
            raise SystemExit(f"header {name}: {headers.get(name)!r}, expected {value!r}")
    if "server" in headers and re.search(r"\d", headers["server"]):
        raise SystemExit(f"nginx shows its version: {headers['server']}")
    status, _, _ = https.request("GET", "/metrics")
    if status != 404:
        raise SystemExit(f"/metrics should not be published through nginx, got {status}")
    big = b"x" * (4 * 1024 * 1024 + 1)
    status, _, _ = https.request(
        "POST", "/v1/chat/completions", body=big,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    if status != 413:
        raise SystemExit(f"a body over 4 MiB should get 413 at the edge, got {status}")
    # HTTP/2 is offered through ALPN.
    context = ssl.create_default_context(cafile=str(https.ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", https.port), timeout=10),
                             server_hostname=DOMAIN) as sock:
        if sock.selected_alpn_protocol() != "h2":
            raise SystemExit(f"HTTP/2 not negotiated: {sock.selected_alpn_protocol()}")
    log("HTTPS: ready through nginx, security headers, HTTP/2, /metrics hidden, 413 over 4 MiB")


def check_rate_limit(https: Https) -> None:
    conn = https.connection()
    statuses = []
    for _ in range(REQ_BURST + 20):
        conn.request("GET", "/health/live")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    if 429 not in statuses:
        raise SystemExit(f"no 429 after {len(statuses)} quick requests: {statuses}")
    log(f"edge rate limit: {statuses.count(200)} admitted, {statuses.count(429)} refused with 429")


def check_tls(https_port: int) -> None:
    from sslyze import (
        Scanner, ScanCommand, ServerNetworkLocation, ServerScanRequest, ServerScanStatusEnum,
    )

    location = ServerNetworkLocation(hostname=DOMAIN, port=https_port, ip_address="127.0.0.1")
    commands = {
        ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES,
        ScanCommand.TLS_1_0_CIPHER_SUITES, ScanCommand.TLS_1_1_CIPHER_SUITES,
        ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES,
        ScanCommand.TLS_COMPRESSION, ScanCommand.HEARTBLEED,
    }
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=commands)])
    results = list(scanner.get_results())
    if len(results) != 1 or results[0].scan_status != ServerScanStatusEnum.COMPLETED:
        raise SystemExit(f"sslyze could not scan nginx: {results}")
    scan = results[0].scan_result

    def accepted(attempt) -> list[str]:
        if attempt.error_reason is not None:
            raise SystemExit(f"sslyze scan failed: {attempt.error_reason}: {attempt.error_trace}")
        return [a.cipher_suite.name for a in attempt.result.accepted_cipher_suites]

    for name, attempt in [
        ("SSL 2.0", scan.ssl_2_0_cipher_suites), ("SSL 3.0", scan.ssl_3_0_cipher_suites),
        ("TLS 1.0", scan.tls_1_0_cipher_suites), ("TLS 1.1", scan.tls_1_1_cipher_suites),
    ]:
        suites = accepted(attempt)
        if suites:
            raise SystemExit(f"{name} is accepted: {suites}")
    tls12 = accepted(scan.tls_1_2_cipher_suites)
    tls13 = accepted(scan.tls_1_3_cipher_suites)
    if not tls12 or not tls13:
        raise SystemExit(f"TLS 1.2 and 1.3 must both be on: 1.2 {tls12}, 1.3 {tls13}")
    # Only ECDHE key exchange (forward secrecy) with an AEAD cipher; no CBC, RC4, 3DES, NULL,
    # EXPORT, anonymous or static-RSA suites.
    strong = re.compile(r"^TLS_ECDHE_(ECDSA|RSA)_WITH_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$")
    weak = [suite for suite in tls12 if not strong.match(suite)]
    if weak:
        raise SystemExit(f"weak TLS 1.2 suites accepted: {weak}")
    if scan.tls_compression.result.supports_compression:
        raise SystemExit("TLS compression is on (CRIME)")
    if scan.heartbleed.result.is_vulnerable_to_heartbleed:
        raise SystemExit("vulnerable to Heartbleed")
    log(f"sslyze: SSL 2/3 and TLS 1.0/1.1 refused; TLS 1.2 suites {tls12}; TLS 1.3 suites {tls13}")


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, required=True,
                        help="directory with the passerelle and passerelle-testkit binaries")
    parser.add_argument("--nginx", default="nginx", help="nginx executable")
    parser.add_argument("--only-config", action="store_true", help="stop after nginx -t")
    parser.add_argument("--timeout", type=int, default=240, help="overall limit in seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit("overall timeout")))
    signal.alarm(args.timeout)

    started: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="passerelle-nginx-") as tmp:
        work = Path(tmp)
        try:
            return run(args, work, started)
        except SystemExit as failure:
            if failure.code not in (0, None):
                for name in ("nginx-error.log", "serve.log"):
                    path = work / name
                    if path.exists():
                        print(f"--- {name} (tail)", file=sys.stderr)
                        print(path.read_text()[-3000:], file=sys.stderr)
                print(f"[nginx-e2e] FAILED: {failure.code}", file=sys.stderr)
                return 1
            return 0
        finally:
            signal.alarm(0)
            for proc in reversed(started):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def run(args, work: Path, started: list[subprocess.Popen]) -> int:
    passerelle = args.bin_dir / "passerelle"
    testkit = args.bin_dir / "passerelle-testkit"
    gateway_port, http_port, https_port = free_port(), free_port(), free_port()
    cert_dir = work / "live" / DOMAIN
    ca_file = write_certificates(cert_dir)
    webroot = work / "acme-webroot"
    webroot.mkdir()
    conf = write_nginx_config(
        work, http_port, https_port, f"127.0.0.1:{gateway_port}", cert_dir, webroot
    )

    test = subprocess.run(
        [args.nginx, "-t", "-p", str(work), "-c", str(conf)],
        capture_output=True, text=True, timeout=30,
    )
    print(test.stderr.strip(), flush=True)
    if test.returncode != 0 or "[emerg]" in test.stderr:
        raise SystemExit("nginx -t rejected the configuration")
    log("nginx -t: the shipped configuration is valid")
    if args.only_config:
        return 0

    model = work / "tiny-q8_0.gguf"
    subprocess.run(
        [str(testkit), "write-qwen2", "--preset", "tiny", "--format", "gguf", "--dtype", "q8_0",
         "--seed", "7", "--out", str(model)],
        check=True, capture_output=True, timeout=60,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    serve_log = open(work / "serve.log", "wb")
    serve = subprocess.Popen(
        [str(passerelle), "serve", "--model", str(model), "--model-id", MODEL_ID,
         "--listen", f"127.0.0.1:{gateway_port}", "--api-keys", API_KEY,
         "--data-dir", str(work / "data"), "--offline", "--trust-forwarded-for"],
        stdout=serve_log, stderr=subprocess.STDOUT, env=env,
    )
    started.append(serve)

    def gateway_ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(gateway_ready, "passerelle serve to be ready", 120, serve)

    nginx = subprocess.Popen(
        [args.nginx, "-p", str(work), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=open(work / "nginx-stderr.log", "wb"),
    )
    started.append(nginx)

    def nginx_listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(nginx_listening, "nginx to listen", 30, nginx)
    https = Https(https_port, ca_file)

    check_http_side(http_port, webroot)
    check_https_basics(https)
    check_streaming(https, gateway_port)
    check_tls(https_port)
    check_rate_limit(https)
    log("all nginx checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
