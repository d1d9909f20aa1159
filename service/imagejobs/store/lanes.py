"""The workers' side of fair share on JetStream (store/fairshare.py says what a lane is and
why the scheme is correct under redelivery and crashes).

`LaneFetcher.fetch(batch, timeout)` is the work queue's `fetch`: it plans `batch` picks
over the lanes that have work with the weighted rotation, then pulls each chosen lane's
share from its consumer in one no-wait pull request. What a worker knows of the lanes
comes from two places: the consumer listing (waiting and unacknowledged counts per lane,
read every `REFRESH_S`), and the API's work notices (`imagejobs.work.<lane>`, one per
publish), which wake an idle fetch at once. A lane with unacknowledged messages but none
waiting is probed too, at most once per listing: a redelivery that came due is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from imagejobs.domain import constants
from imagejobs.store.fairshare import (
    WORK_NOTICE_PREFIX,
    Rotation,
    lane_consumer,
    lane_of_consumer,
    lane_of_notice,
)
from imagejobs.store.jetstream import nats_errors

REFRESH_S = 0.5  # how often a fetching worker re-reads the lanes' counts
PULL_REPLY_S = 2.0  # a no-wait pull is answered at once; past this, the inbox is replaced
CONSUMER_PAGE = 256  # the server's page of a consumer listing
MAX_PAGES = 64
PASSES = 3  # plans per take: lanes that gave fewer than planned leave picks to others


class LanePull:
    """No-wait pull requests to one lane's consumer, answered on an inbox of its own."""

    def __init__(self, nc: Client, consumer: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{constants.QUEUE_STREAM}.{consumer}"
        self._sub: Subscription | None = None
        self._inbox = ""
        self._lock = asyncio.Lock()

    async def pull(self, batch: int) -> list[Msg]:
        """Up to `batch` messages the consumer can deliver now ([] when it has none)."""
        async with self._lock:
            with nats_errors("queue fetch"):
                if self._sub is None:
                    self._inbox = self._nc.new_inbox()
                    self._sub = await self._nc.subscribe(self._inbox, pending_msgs_limit=-1)
                request = json.dumps({"batch": batch, "no_wait": True}).encode()
                await self._nc.publish(self._next, request, reply=self._inbox)
                return await self._collect(self._sub, batch)

    async def _collect(self, sub: Subscription, batch: int) -> list[Msg]:
        msgs: list[Msg] = []
        while len(msgs) < batch:
            try:
                msg = await sub.next_msg(timeout=PULL_REPLY_S)
            except (TimeoutError, NatsTimeout):
                # a late answer must not land in a later pull: it goes to a dead inbox,
                # and its messages come back after ack_wait
                await self.close()
                break
            if JetStreamContext.is_status_msg(msg):  # 404 no messages, 408, 409
                break
            msgs.append(msg)
        return msgs

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()


class LaneFetcher:
    """Fetches for one worker process across every lane of the work queue.

    :param weights: a lane's weight by lane (its owner); other lanes weigh 1.
    """

    def __init__(self, nc: Client, js: JetStreamContext, weights: Mapping[str, int]) -> None:
        self._nc = nc
        self._js = js
        self._rotation = Rotation(weights)
        self._waiting: dict[str, int] = {}  # lane -> messages not yet delivered, as last seen
        self._unacked: set[str] = set()  # lanes with deliveries out (redeliveries may fall due)
        self._probed: set[str] = set()  # of those, found with nothing since the last listing
        self._pulls: dict[str, LanePull] = {}
        self._listed_at = -math.inf
        self._wake = asyncio.Event()
        self._notices: Subscription | None = None

    async def fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        """Up to `batch` messages, the lanes in turn, waiting up to `timeout_s` for one."""
        await self._listen()
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() - self._listed_at >= REFRESH_S:
                await self._list()
            got = await self._take(batch)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(remaining, REFRESH_S))

    async def _listen(self) -> None:
        if self._notices is not None:
            return

        async def on_notice(msg: Msg) -> None:
            lane = lane_of_notice(msg.subject)
            self._waiting[lane] = self._waiting.get(lane, 0) + 1
            self._wake.set()

        with nats_errors("work notices"):
            self._notices = await self._nc.subscribe(
                f"{WORK_NOTICE_PREFIX}.*", cb=on_notice, pending_msgs_limit=-1
            )

    async def _list(self) -> None:
        """Re-read every lane's waiting and unacknowledged counts."""
        waiting: dict[str, int] = {}
        unacked: set[str] = set()
        with nats_errors("queue lanes"):
            for page in range(MAX_PAGES):
                infos = await self._js.consumers_info(
                    constants.QUEUE_STREAM, offset=page * CONSUMER_PAGE
                )
                for info in infos:
                    lane = lane_of_consumer(str(info.name))
                    if lane is not None:
                        waiting[lane] = int(info.num_pending or 0)
                        if info.num_ack_pending:
                            unacked.add(lane)
                if len(infos) < CONSUMER_PAGE:
                    break
        self._waiting, self._unacked = waiting, unacked
        self._probed.clear()
        self._listed_at = time.monotonic()

    def _available(self, taken: Mapping[str, int], batch: int) -> dict[str, int]:
        """The lanes a pick may go to now, with how many each may give at most."""
        out: dict[str, int] = {}
        for lane, n in self._waiting.items():
            if n > 0:
                out[lane] = n
        for lane in self._unacked:
            if lane not in out and lane not in self._probed:
                out[lane] = batch  # unknown: what fell due for redelivery
        return {lane: n for lane, n in out.items() if lane not in taken}

    async def _take(self, batch: int) -> list[Msg]:
        got: list[Msg] = []
        short: dict[str, int] = {}  # lanes that gave fewer than asked, this take
        for _ in range(PASSES):
            left = batch - len(got)
            plan = self._rotation.plan(self._available(short, left), left)
            if not plan:
                break
            # the lanes' pulls at once: one round trip per take, however many lanes
            answers = await asyncio.gather(
                *(self._pull(lane).pull(count) for lane, count in plan), return_exceptions=True
            )
            failed = [a for a in answers if isinstance(a, BaseException)]
            for (lane, count), msgs in zip(plan, answers, strict=True):
                if isinstance(msgs, BaseException):
                    continue
                got.extend(msgs)
                if len(msgs) < count:
                    short[lane] = len(msgs)
                    self._waiting[lane] = 0
                    self._probed.add(lane)
                else:  # keep it a candidate: the listing may undercount
                    self._waiting[lane] = max(self._waiting.get(lane, 0) - count, 1)
            if failed and not got:  # messages some pulls did get are handed on first
                raise failed[0]
            if failed or len(got) >= batch or not short:
                break
        return got

    def _pull(self, lane: str) -> LanePull:
        pull = self._pulls.get(lane)
        if pull is None:
            pull = self._pulls[lane] = LanePull(self._nc, lane_consumer(lane))
        return pull

    async def close(self) -> None:
        for pull in self._pulls.values():
            await pull.close()
        if self._notices is not None:
            with contextlib.suppress(Exception):
                await self._notices.unsubscribe()
