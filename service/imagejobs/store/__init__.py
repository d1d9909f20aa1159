"""The job store: all job state, in NATS JetStream, behind Protocols.

protocols.py    what the service and the worker need (records, queue, objects, index,
                idempotency, quotas, change notices) and the Backend bundle
jetstream.py    the one JetStream seam: connect, declare streams, translate NATS errors
                (one context manager), one compare-and-set publish
factory.py      the JetStream Backend for a process, on one connection
records.py      job records (KV, per-revision TTL, compare-and-set)
queue.py        the work queue (one message per job, deduplicated) and cancel notices
fairshare.py    lanes per key and the weighted rotation workers take them in (why it is
                correct under redelivery and crashes); lanes.py its JetStream pulls
objects.py      image bytes, chunked, each expiring with its job
index.py        the per-caller list index
idempotency.py  Idempotency-Key claims
quotas.py       per-key rate counters and concurrency slots
budgets.py      per-key spend per budget period: reserve, settle, reclaim
notifier.py     state-change fan-out for wait / watch / SSE
memory.py, memory_queue.py  the in-memory twin of all of the above, for unit tests
clock.py        the clock everything reads (a FakeClock in tests)
"""
