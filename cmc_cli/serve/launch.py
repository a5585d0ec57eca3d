"""Start `cmc serve` as a child process and talk to it over HTTP (stdlib only): for scripts, benchmarks
and tests that need a running server.

    with ServerProcess(["models/user", "-d", "idk=deltas/idk"], log="serve.log") as s:
        ids = s.complete("Question: ...\\nAnswer:", 32, {"cmc_deltas": ["idk:0.5"]})
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`cmc serve ARGS --port P -- VLLM_ARGS` in its own session (so that stopping it can be checked to
    leave no process behind)."""

    def __init__(self, args: list[str], log: str | Path, vllm_args: list[str] = (), cwd: str | Path | None = None,
                 env: dict | None = None, ready_timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = None
        self.ready_timeout = ready_timeout
        self.log = open(log, "w+")
        cmd = [sys.executable, "-m", "cmc_cli", "serve", *args, "--port", str(self.port), "--", *vllm_args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True)

    def __enter__(self) -> "ServerProcess":
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 300) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cmc serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    self.model = json.loads(r.read())["data"][0]["id"]
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"cmc serve did not become ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:]

    def post(self, body: dict, path: str = "/v1/completions") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def complete(self, prompt: str, max_tokens: int, xargs: dict | None = None, **sampling) -> list[int]:
        """Greedy (unless sampling says otherwise) completion's token ids of a raw prompt."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "return_token_ids": True, **sampling}
        if xargs is not None:
            body["vllm_xargs"] = xargs
        status, out = self.post(body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {out}")
        return list(out["choices"][0]["token_ids"])

    def stop(self, sig=signal.SIGTERM, timeout: float = 90) -> int:
        """Signal the server and wait; SIGKILL its whole session (and raise) if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise RuntimeError(f"cmc serve did not stop on {sig!r} within {timeout} s") from None
        return self.proc.returncode

    def session_alive(self) -> bool:
        """Whether any process of the server's session (vLLM's engine processes included) is still running."""
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False
