"""Voice notes to text: a small seam, and the one provider keel ships — a local command.

keel downloads no speech model (a bot blocked on a download freezes every chat). An operator who
wants voice notes read installs a transcriber they trust (whisper.cpp, faster-whisper, a script
calling a hosted API) and names it:

    KEEL_TRANSCRIBER=command
    KEEL_TRANSCRIBER_COMMAND="/usr/local/bin/transcribe --lang auto"

The command gets the audio file's path as its last argument and prints the text on stdout; it
runs with a time limit (``TRANSCRIBE_TIMEOUT_S``) and without a shell. With no transcriber, a voice
note gets one line saying how to enable it (``NOT_CONFIGURED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import tempfile
from pathlib import Path
from typing import Protocol

from agents.errors import KeelError

TRANSCRIBE_TIMEOUT_S = 120.0
MAX_TRANSCRIPT_CHARS = 20_000
NOT_CONFIGURED = (
    "I can't listen to voice notes here: no transcriber is configured. The bot's owner can "
    "enable it with KEEL_TRANSCRIBER=command and KEEL_TRANSCRIBER_COMMAND (a local program that "
    "prints the text of an audio file); until then, please type your message."
)


class TranscriptionError(KeelError):
    """The transcriber could not turn the audio into text; the message says why."""


class Transcriber(Protocol):
    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        """The text spoken in ``audio``; raises TranscriptionError."""
        ...


class CommandTranscriber:
    """Runs ``argv + [audio file]`` and reads the transcript from its standard output."""

    def __init__(self, argv: list[str], *, timeout_s: float = TRANSCRIBE_TIMEOUT_S) -> None:
        if not argv:
            raise ValueError("the transcriber command is empty")
        self.argv = argv
        self.timeout_s = timeout_s

    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        suffix = {"audio/ogg": ".ogg", "audio/mpeg": ".mp3", "audio/mp4": ".m4a",
                  "audio/wav": ".wav", "audio/x-wav": ".wav"}.get(media_type, ".audio")
        fd, name = tempfile.mkstemp(prefix="keel-voice-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(audio)
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.argv, name, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            except OSError as exc:
                raise TranscriptionError(f"the transcriber {self.argv[0]!r} could not start: "
                                         f"{exc.strerror or exc}") from None
            try:
                async with asyncio.timeout(self.timeout_s):
                    stdout, stderr = await process.communicate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise TranscriptionError(f"the transcriber took longer than "
                                         f"{self.timeout_s:g} s") from None
        finally:
            await asyncio.to_thread(Path(name).unlink, missing_ok=True)
        if process.returncode != 0:
            last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise TranscriptionError(f"the transcriber exited with {process.returncode}"
                                     + (f": {last[0][:200]}" if last[0] else ""))
        text = stdout.decode("utf-8", "replace").strip()
        if not text:
            raise TranscriptionError("the transcriber heard no words in this voice note")
        return text[:MAX_TRANSCRIPT_CHARS]


def transcriber_from(provider: str | None, command: str | None) -> Transcriber | None:
    """The configured transcriber (``KEEL_TRANSCRIBER``, ``KEEL_TRANSCRIBER_COMMAND``), or None."""
    if not provider or provider == "none":
        return None
    if provider == "command":
        argv = shlex.split(command or "")
        if not argv:
            raise KeelError("KEEL_TRANSCRIBER=command needs KEEL_TRANSCRIBER_COMMAND: the program "
                            "(and its arguments) that prints the text of an audio file given "
                            "its path")
        return CommandTranscriber(argv)
    raise KeelError(f"KEEL_TRANSCRIBER={provider!r} is not a known transcriber; use 'command' "
                    "(or leave it unset)")
