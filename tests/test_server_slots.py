"""eoq-server's slot choice and queue (eoq.server_slots) on stand-in backends: which free slot a
prompt gets, the bounded FIFO, hand-over on release, and waiters that give up. The real engines
are exercised end to end in test_server.py."""
import asyncio
import random

import pytest

from eoq.server_slots import QueueFull, ShuttingDown, SlotPool, common_prefix, reusable_prefix


class _Core:
    def __init__(self, cut):
        if cut:
            self.reuse_prefix = lambda tokens: 0  # only its presence matters here

    def kv_info(self):
        return {"mode": "f16", "n_tokens": 0, "bytes": 0, "bits_per_entry": 16.0}


class FakeBackend:
    def __init__(self, cut=False):
        self.core = _Core(cut)


def _pool(n, cut=False, max_queue=2):
    return SlotPool([FakeBackend(cut) for _ in range(n)], max_queue=max_queue)


def test_common_and_reusable_prefix_against_a_plain_loop():
    rng = random.Random()
    for _ in range(200):
        a = [rng.randrange(4) for _ in range(rng.randrange(8))]
        b = a[:rng.randrange(len(a) + 1)] + [rng.randrange(4) for _ in range(rng.randrange(8))]
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        assert common_prefix(a, b) == n
        whole = n if n == len(a) and n < len(b) else 0
        assert reusable_prefix(a, b) == whole
        assert reusable_prefix(a, b, cut=True) == max(0, min(n, len(b) - 1))


def _set(slot, cached, prompt_len, last_used):
    slot.cached, slot.prompt_len, slot.last_used = cached, prompt_len, last_used


def test_choice_continues_a_conversation_else_lru():
    async def main():
        pool = _pool(3)
        _set(pool.slots[0], [1, 2, 9], 2, 1.0)      # shares a prefix only
        _set(pool.slots[1], [1, 2, 3, 4], 3, 3.0)   # prompt [1, 2, 3], then generated 4
        _set(pool.slots[2], [7], 1, 2.0)
        assert (await pool.acquire([1, 2, 3, 4, 5, 6])).index == 1  # its next turn
        assert pool.slots[1].prompt_len == 6
        # Not a continuation of anything: the least recently used, not the partial match.
        assert (await pool.acquire([1, 2, 8])).index == 0
        assert (await pool.acquire([1, 2, 8])).index == 2
        # With partial reuse (sessions) too.
        system, history = [1, 2, 3], [10, 11, 12, 13, 14, 15]
        cpool = _pool(3, cut=True)
        _set(cpool.slots[0], system + history, 5, 5.0)  # a chat: prompt system + [10, 11]
        _set(cpool.slots[1], system + [20, 21], 4, 4.0)  # another: prompt system + [20]
        _set(cpool.slots[2], [], 0, 1.0)
        new = await cpool.acquire(system + [30, 31])  # a new chat: no one's history is cut
        assert new.index == 2
        assert (await cpool.acquire(system + history + [40])).index == 0  # a next turn
        cpool.release(cpool.slots[0])
        assert (await cpool.acquire(system + [20])).index == 1  # the same prompt again

    asyncio.run(main())


def test_queue_bound_fifo_and_cancelled_waiters():
    async def main():
        pool = _pool(1, max_queue=2)
        s = await pool.acquire([1])
        w1 = asyncio.ensure_future(pool.acquire([2]))
        w2 = asyncio.ensure_future(pool.acquire([3]))
        await asyncio.sleep(0)
        assert pool.queue_depth == 2
        with pytest.raises(QueueFull):
            await pool.acquire([4])
        w1.cancel()  # a client that gives up leaves the queue
        await asyncio.sleep(0)
        assert pool.queue_depth == 1
        pool.release(s)  # handed straight to the next waiter
        s2 = await w2
        assert s2 is s and s.busy and pool.queue_depth == 0
        w3 = asyncio.ensure_future(pool.acquire([5]))
        await asyncio.sleep(0)
        pool.cancel_all()  # shutting down: waiters and new requests are refused
        with pytest.raises(ShuttingDown):
            await w3
        with pytest.raises(ShuttingDown):
            await pool.acquire([6])
        pool.shutdown()

    asyncio.run(main())
