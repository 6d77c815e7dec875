#!/usr/bin/env python3
"""Time to first token of a streamed chat through `passerelle serve`, with the Llama Guard input
check on and off, for a short and a long user message.

    python3 crates/safety/benches/ttft_with_checks.py PASSERELLE_BINARY LLM_GGUF GUARD_GGUF \
        [off,on,sequential]

Starts the server once per mode on 127.0.0.1 (`off`: `--no-safety`; `on`: `--safety-model GUARD
--safety-checks input`; `sequential`: the same with `--safety-sequential`, the check before
generation instead of alongside it; default `off,on`), sends each message REPEAT times after one
warm-up, and prints the median time from sending the request to the first content delta (or
the end of the choice, when the random model's first tokens decode to no text). Stops
only the servers it started.
"""

import http.client
import json
import socket
import statistics
import subprocess
import sys
import time

REPEAT = 5
WORDS = (
    "Could you explain how suspension bridges carry the weight of traffic across a wide river "
    "and why engineers choose steel cables for them "
).split()


def message(words):
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready")


def ttft(port, text):
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 4,
            "stream": True,
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        choice = json.loads(line[6:])["choices"][0]
        # The first token's text, or the end when the random model's first tokens decode to
        # nothing: either way the input verdict has come.
        if first is None and (choice["delta"].get("content") or choice.get("finish_reason")):
            first = time.perf_counter() - start
    return first


def run(binary, llm, guard, mode):
    port = free_port()
    args = [binary, "--log-filter", "warn", "serve", "--listen", f"127.0.0.1:{port}",
            "--model", llm, "--model-id", "bench"]
    if mode == "off":
        args += ["--no-safety"]
    else:
        args += ["--safety-model", guard, "--safety-checks", "input",
                 "--safety-timeout-ms", "60000"]
    if mode == "sequential":
        args += ["--safety-sequential"]
    process = subprocess.Popen(args)
    try:
        wait_ready(port, process)
        results = {}
        for words in (20, 200):
            text = message(words)
            ttft(port, text)  # warm-up: the guard's prompt prefix, the model's first run
            times = [ttft(port, text) for _ in range(REPEAT)]
            results[words] = statistics.median(times)
        return results
    finally:
        process.terminate()
        process.wait(timeout=30)


def main():
    binary, llm, guard = sys.argv[1:4]
    modes = sys.argv[4].split(",") if len(sys.argv) > 4 else ["off", "on"]
    results = {mode: run(binary, llm, guard, mode) for mode in modes}
    print("| user message | " + " | ".join(f"TTFT, {mode}" for mode in modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for words in (20, 200):
        cells = " | ".join(f"{results[mode][words]*1000:.0f} ms" for mode in modes)
        print(f"| {words} words | {cells} |")


if __name__ == "__main__":
    main()
