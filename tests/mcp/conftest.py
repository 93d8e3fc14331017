"""MCP test servers as local processes: one over stdio (keel starts it), one over streamable
HTTP on 127.0.0.1 (started here, so a test can kill it and start it again)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio

DEMO = Path(__file__).with_name("demo_server.py")
READY_WITHIN_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HttpServer:
    """``python demo_server.py http PORT``, restartable on the same port."""

    port: int
    label: str = "remote"
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        self._spawn()
        await self._until_listening()

    def _spawn(self) -> None:
        assert self.process is None or self.process.poll() is not None
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO), "http", str(self.port)], stdout=out, stderr=out,
            env={"DEMO_LABEL": self.label, "PATH": "/usr/bin:/bin"})
        self.starts.append(self.process.pid)

    async def _until_listening(self) -> None:
        # A process coming up is not an event this test can wait on: poll its port, bounded.
        loop = asyncio.get_running_loop()
        until = loop.time() + READY_WITHIN_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the MCP test server exited ({self.process.returncode})")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if loop.time() > until:
                    raise AssertionError("the MCP test server did not listen in time") from None
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest_asyncio.fixture
async def http_server(tmp_path: Path) -> AsyncIterator[HttpServer]:
    server = HttpServer(port=free_port(), log=tmp_path / "mcp-http.log")
    await server.start()
    try:
        yield server
    finally:
        server.kill()


def stdio_entry(name: str = "local", *, label: str = "local", count_file: Path | None = None,
                extra: str = "") -> str:
    env = f'DEMO_LABEL = "{label}"'
    if count_file is not None:
        env += f', DEMO_COUNT_FILE = "{count_file}"'
    return (f'[[mcp]]\nname = "{name}"\ncommand = "{sys.executable}"\nargs = ["{DEMO}", '
            f'"stdio"]\nenv = {{ {env} }}\n{extra}\n')


def http_entry(server: HttpServer, name: str = "remote", extra: str = "") -> str:
    return f'[[mcp]]\nname = "{name}"\nurl = "{server.url}"\n{extra}\n'
