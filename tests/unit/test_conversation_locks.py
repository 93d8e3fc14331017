import asyncio

from bot.service import ConversationLocks


async def test_one_holder_per_conversation_and_no_leftover_locks() -> None:
    locks = ConversationLocks()
    inside: list[str] = []
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def worker(name: str, key: tuple[int, int], gate: asyncio.Event | None) -> None:
        async with locks.hold(key):
            inside.append(name)
            assert len([n for n in inside if n.startswith(str(key[0]))]) == 1
            order.append(name)
            if gate is not None:
                first_in.set()
                await gate.wait()
            inside.remove(name)

    a = asyncio.create_task(worker("1a", (1, 0), release))
    await first_in.wait()
    b = asyncio.create_task(worker("1b", (1, 0), None))  # waits for 1a
    c = asyncio.create_task(worker("2a", (2, 0), None))  # another chat goes at once
    await c
    assert order == ["1a", "2a"]
    release.set()
    # a newcomer arriving while 1b waits must queue on the same lock, not a fresh one
    d = asyncio.create_task(worker("1c", (1, 0), None))
    await asyncio.gather(a, b, d)
    assert order == ["1a", "2a", "1b", "1c"]
    assert len(locks) == 0
