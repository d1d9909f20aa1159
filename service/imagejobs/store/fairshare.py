"""Fair share between keys: each job owner (a virtual key; one lane for every anonymous
caller) queues in a lane of its own, and a worker takes its next jobs round-robin across
the lanes that have work, not in global submit order. A key's `weight` gives its lane
that many picks per turn (smooth weighted round-robin, as nginx balances upstreams: over
any run of picks each lane gets its weight's share, interleaved rather than in bursts).
Within a lane, jobs run in submit order.

On JetStream (store/queue.py, store/lanes.py) a lane is a subject prefix of the JOBQ
work-queue stream with a durable pull consumer of its own:

    lane ""  (anonymous; everyone with fair_share = false)  imagejobs.run.<job_id>
             consumer `workers`, filter imagejobs.run.*
    lane L   (a key's jobs, L = the owner: vk-<id>)         imagejobs.run.<L>.<job_id>
             consumer `workers-<L>`, filter imagejobs.run.<L>.>

The filters never overlap (a work-queue stream requires it), and lane "" is exactly the
layout the queue had before lanes, so messages queued before an upgrade still run. The API
makes a lane's consumer before it first publishes to it (and again every minute, in
case it was removed), then sends a notice on `imagejobs.work.<L>` so that idle workers
pull at once; workers also list the consumers (their waiting and unacknowledged counts)
every half second, so a missed notice delays nothing for long.

Why this stays correct under redelivery and crashes: fairness only decides which lane a
worker pulls from next; every delivery guarantee is still the consumer's and the job
record's.

- A message is removed only by an ack after its job's terminal write (worker/handler.py);
  a worker that dies holding one leaves it unacknowledged, and the lane's consumer
  delivers it again after ack_wait, to any worker. Workers therefore also probe lanes
  that have unacknowledged messages, not only lanes with waiting ones.
- A redelivered message finds the record as it is: terminal (acked), taken by a live
  worker (its claim loses the compare-and-set), or free to claim again; so a job never
  completes twice, whichever lane or worker a delivery comes through.
- The rotation's state is per worker process and holds no job: a worker that crashes or
  restarts starts a fresh rotation, which costs at most a few picks of fairness.
- Nothing is published twice into two lanes: the message id is the job id for the whole
  stream, so a repaired or retried publish inside the duplicate window is dropped.
- A lane consumer that does not exist yet only delays its jobs: messages wait in the
  stream, and the consumer, once made, delivers every message on its subjects.
"""

from __future__ import annotations

from collections.abc import Mapping

from imagejobs.domain import constants

ANONYMOUS = ""  # the lane of callers without a key, and of everyone without fair share
WORK_NOTICE_PREFIX = "imagejobs.work"  # .<lane>: "this lane has a new job" (core NATS)
_ANONYMOUS_TOKEN = "_"  # a lane's token in a notice subject, for the anonymous lane
LANE_CONSUMER_PREFIX = f"{constants.WORKER_CONSUMER}-"


def lane_of(owner: str, fair_share: bool) -> str:
    """The lane a job of `owner` queues in."""
    return owner if fair_share else ANONYMOUS


def lane_subject(lane: str, job_id: str) -> str:
    """The subject of a job's message in its lane."""
    prefix = constants.QUEUE_SUBJECT_PREFIX
    return f"{prefix}.{lane}.{job_id}" if lane else f"{prefix}.{job_id}"


def lane_filter(lane: str) -> str:
    """The filter of a lane's consumer (exactly its subjects)."""
    prefix = constants.QUEUE_SUBJECT_PREFIX
    return f"{prefix}.{lane}.>" if lane else f"{prefix}.*"


def lane_consumer(lane: str) -> str:
    """The durable name of a lane's consumer."""
    return LANE_CONSUMER_PREFIX + lane if lane else constants.WORKER_CONSUMER


def lane_of_consumer(name: str) -> str | None:
    """The lane a consumer of the work queue serves; None for any other consumer."""
    if name == constants.WORKER_CONSUMER:
        return ANONYMOUS
    if name.startswith(LANE_CONSUMER_PREFIX) and len(name) > len(LANE_CONSUMER_PREFIX):
        return name[len(LANE_CONSUMER_PREFIX) :]
    return None


def notice_subject(lane: str) -> str:
    return f"{WORK_NOTICE_PREFIX}.{lane or _ANONYMOUS_TOKEN}"


def lane_of_notice(subject: str) -> str:
    token = subject.rsplit(".", 1)[-1]
    return ANONYMOUS if token == _ANONYMOUS_TOKEN else token


class Rotation:
    """Smooth weighted round-robin over lanes: each pick adds every candidate's weight to
    its running score and takes the highest (the earliest listed, on a tie), which then
    gives back the total. Lanes absent from a pick's candidates lose their score, so a
    lane that comes back after a pause starts level instead of with a burst.

    :param weights: a lane's weight by lane (default 1 for any other lane).
    """

    def __init__(self, weights: Mapping[str, int] | None = None) -> None:
        self._weights = dict(weights or {})
        self._score: dict[str, int] = {}

    def weight(self, lane: str) -> int:
        return max(self._weights.get(lane, 1), 1)

    def plan(self, available: Mapping[str, int], picks: int) -> list[tuple[str, int]]:
        """Up to `picks` picks among the lanes of `available` (lane -> how many it can
        give at most; in candidate order), grouped: (lane, count) in the order each lane
        was first picked."""
        counts: dict[str, int] = {}
        for _ in range(picks):
            lanes = [lane for lane, n in available.items() if n > counts.get(lane, 0)]
            if not lanes:
                break
            for gone in set(self._score) - set(lanes):
                del self._score[gone]
            total = 0
            for lane in lanes:
                self._score[lane] = self._score.get(lane, 0) + self.weight(lane)
                total += self.weight(lane)
            best = max(lanes, key=lambda lane: self._score[lane])
            self._score[best] -= total
            counts[best] = counts.get(best, 0) + 1
        return list(counts.items())
