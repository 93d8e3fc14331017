"""The floor for any bot: the same model calls made directly with ``anthropic.AsyncAnthropic``.

Run as a subprocess (``python -m bench.direct_client``) so, like the bot, it has its own interpreter
and event loop and shares nothing with the fakes but loopback HTTP. It reads a job from stdin and
prints timings to stdout, both JSON; the input is a list of jobs, the output a list of results:

    [{"base_url": ..., "api_key": ..., "concurrent": false, "warmup": body_or_null,
      "turns": [[body, body], [body], ...]}, ...]   # each turn: its calls, one after another

Sequential mode runs the turns one after another; concurrent mode starts every turn at once. A body
recorded with ``"stream": true`` is streamed and read event by event, as keel reads it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import anthropic


async def _call(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> None:
    body = dict(body)
    if body.pop("stream", False):
        async with client.messages.stream(**body) as stream:
            async for _event in stream:
                pass
            await stream.get_final_message()
    else:
        raw = await client.messages.with_raw_response.create(**body)
        await raw.parse()


async def _turn(client: anthropic.AsyncAnthropic, calls: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.time()
    durations = []
    for body in calls:
        t = time.perf_counter()
        await _call(client, body)
        durations.append(time.perf_counter() - t)
    return {"started": started, "ended": time.time(), "calls": durations}


async def run(job: dict[str, Any]) -> dict[str, Any]:
    client = anthropic.AsyncAnthropic(api_key=job["api_key"], base_url=job["base_url"],
                                      max_retries=2, timeout=600.0)  # as keel: a refused
    # connect under a 1,000-call burst is retried, not the end of the baseline
    try:
        # one untimed call first: connection set-up and lazy imports are not per-turn costs
        if job.get("warmup"):
            await _call(client, job["warmup"])
        t0 = time.time()
        if job.get("concurrent"):
            turns = await asyncio.gather(*(_turn(client, calls) for calls in job["turns"]))
        else:
            turns = [await _turn(client, calls) for calls in job["turns"]]
        return {"t0": t0, "wall_s": time.time() - t0, "turns": list(turns)}
    finally:
        await client.close()


async def run_all(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [await run(job) for job in jobs]


def main() -> None:
    print(json.dumps(asyncio.run(run_all(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
