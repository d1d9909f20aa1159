"""Defaults and fixed limits, with their units in their names."""

from __future__ import annotations

DEFAULT_RESULT_TTL_S = 3600  # the contract's default result lifetime after completion
MAX_RESULT_TTL_S = 30 * 24 * 3600  # a larger requested TTL is capped to this
PENDING_TTL_S = 7 * 24 * 3600  # safety TTL of non-terminal job records and uploads
UPLOAD_TTL_S = 2 * 24 * 3600  # uploaded images: the job's whole life
DELETE_MARKER_TTL_S = 300  # a deleted record's marker (and a released key) lingers this long
CHUNK_EXTRA_TTL_S = 60  # image chunks outlive their meta record by this much

PROVIDER_TIMEOUT_S = 300.0  # one upstream call: image models take minutes
PROVIDER_MAX_RETRIES = 3  # retries of one provider call after the first attempt
PROVIDER_CONCURRENCY = 16  # calls in flight to one provider, across the cluster
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # one result image a vendor links to
JOB_TIMEOUT_S = 900.0  # a whole job incl. retries and fallbacks
ACK_WAIT_S = 30.0  # JetStream redelivers an un-acked job after this
MAX_DELIVERIES = 5  # deliveries of one job before it is failed for good
DUPLICATE_WINDOW_S = 120.0  # JetStream dedupe window for Nats-Msg-Id
MAX_JOB_AGE_S = 2 * 3600  # a job not terminal this long after submit is failed
REPAIR_AFTER_S = 10.0  # a pending job this old with no queue message is re-published
# a queue message this old (by the job's created_at) whose record is missing is dropped:
# until then its record, written together with it, may still be on its way. Past the
# dedupe window, so that a later re-publish of the job is not swallowed as a duplicate.
RECORD_GRACE_S = DUPLICATE_WINDOW_S + 30.0
IDEMPOTENCY_TTL_S = 24 * 3600  # an Idempotency-Key maps to its job this long
STORE_TIMEOUT_S = 2.0  # one JetStream request; a lost quorum or an election fails within it
SUBMIT_TIMEOUT_S = 2 * STORE_TIMEOUT_S  # a whole submit (its several requests) answers within it
SUBMIT_UPLOAD_S_PER_MIB = 0.25  # ... plus this per MiB it uploads (4 MiB/s, far below loopback)
MAX_WAIT_S = 60.0  # cap of a long-poll (`?wait=`)
WATCH_KEEPALIVE_S = 15.0  # SSE comment / safety re-read interval of an idle watch

QUEUE_MAX_JOBS = 100_000  # the work queue's bound; a submit beyond it is 429
WORKER_CONCURRENCY = 32  # jobs in flight per worker process
WORKER_DRAIN_S = 30.0  # SIGTERM: a worker finishes in-flight jobs this long
WORKER_BEAT_S = 5.0  # a worker announces itself (GetStats' workers) this often
WORKER_BEAT_TTL_S = 15  # and is listed until this long after its last beat

MAX_FILE_BYTES = 50 * 1024 * 1024  # one uploaded image
MAX_BODY_BYTES = 53 * 1024 * 1024  # one request body: a 50 MiB file and its form
FETCH_MAX_BYTES = 50 * 1024 * 1024  # a caller-given input image URL's body
FETCH_TIMEOUT_S = 30.0  # fetching one such URL, redirects included
FETCH_MAX_REDIRECTS = 3

CHUNK_BYTES = 512 * 1024  # object-store chunk size, well under nats-server's 1 MiB max_payload
MAX_GRPC_MESSAGE_BYTES = 128 * 1024 * 1024  # uploads and b64 results of several MB

JOBS_BUCKET = "JOBS"  # KV bucket of job records (stream KV_JOBS)
QUEUE_STREAM = "JOBQ"  # WorkQueue stream of jobs to run
QUEUE_SUBJECT_PREFIX = "imagejobs.run"  # imagejobs.run.<job_id>
WORKER_CONSUMER = "workers"
STATE_SUBJECT_PREFIX = "imagejobs.state"  # every KV write republished here (waiters)
CANCEL_SUBJECT_PREFIX = "imagejobs.cancel"  # imagejobs.cancel.<job_id>: abort it (workers)
INDEX_STREAM = "JOBINDEX"  # per-caller job index (list)
INDEX_SUBJECT_PREFIX = "imagejobs.index"  # .<owner>.<kind>.<created_ms>.<job_id>
IDEMPOTENCY_STREAM = "IDEMPOTENCY"
LIMIT_STREAM = "LIMITS"  # per-key rate buckets and concurrency slots
LIMIT_SUBJECT_PREFIX = "imagejobs.limit"  # .slot.<key>.<n>
RATE_STREAM = "RATES"  # per-key request counters (JetStream counters)
RATE_SUBJECT_PREFIX = "imagejobs.rate"  # .<key>.<minute since the epoch>
SPEND_STREAM = "SPEND"  # per-key spend per budget period (JetStream counters, µUSD)
SPEND_SUBJECT_PREFIX = "imagejobs.spend"  # .<key>.<period window>.used | .reserved
SPEND_DUPLICATE_WINDOW_S = 900.0  # a spend increment retried within this counts once
HOLD_TTL_S = 7 * 24 * 3600  # a budget hold (LIMITS, .hold.<key>.<job_id>) lives this long at most
IDEMPOTENCY_SUBJECT_PREFIX = "imagejobs.idem"  # .<owner>.<sha256(key)>
OBJECT_STREAM = "IMAGES"
OBJECT_SUBJECT_PREFIX = "imagejobs.obj"  # .meta.<id> and .chunk.<id>
OUTBOX_STREAM = "HOOKQ"  # WorkQueue stream of owed webhook deliveries (the outbox)
OUTBOX_SUBJECT_PREFIX = "imagejobs.hookq"  # .<endpoint>.<job_id>
OUTBOX_CONSUMER_PREFIX = "hooks-"  # one durable consumer per endpoint: hooks-<endpoint>
OUTBOX_MAX_AGE_S = 7 * 24 * 3600  # an owed delivery no dispatcher took this long is dropped
DELIVERY_STREAM = "HOOKS"  # delivery records (history) and 410-disabled endpoint markers
DELIVERY_SUBJECT_PREFIX = "imagejobs.hooks"  # .delivery.<job_id>, .gone.<endpoint>
WORKERS_STREAM = "WORKERS"  # live workers' heartbeats, one per worker, TTL'd
WORKERS_SUBJECT_PREFIX = "imagejobs.workers"  # .<worker token>

DEFAULT_MAX_PROMPT_CHARS = 32_000  # prompt and negative_prompt, in characters
MAX_N = 10  # images per request
MAX_IMAGES = 16  # uploaded images per edit/variation; entries of `input_images`
MAX_IMAGE_PIXELS = 8192 * 8192  # an input image's width x height; more is a decompression bomb
MAX_JSON_DEPTH = 32  # nesting of a JSON request body (pass-through values included)
MAX_FALLBACKS = 10  # `fallbacks` entries, each tried in turn when the one before fails

# fault tests only (the `failpoint` setting): where a process dies as a crash there would.
# The API's: right after a submit's record is written, before the job is queued. The
# worker's: right after a job's terminal write, before its debts (webhook intent, budget
# settlement) are paid. A process ignores the other's.
FAILPOINT_BEFORE_PUBLISH = "submit.before_publish"
FAILPOINT_AFTER_TERMINAL_WRITE = "worker.after_terminal_write"
FAILPOINTS = frozenset({"", FAILPOINT_BEFORE_PUBLISH, FAILPOINT_AFTER_TERMINAL_WRITE})
