"""The worker side: pull a job, claim it, call the providers, store the images, write the
terminal state, then ack (at-least-once delivery, exactly-once completion).

    worker.py   the bounded pull loop, burst mode, drain on shutdown; parts injected
    handler.py  one delivery to its end: claim (compare-and-set), heartbeat, finish
    runner.py   one claimed job: primary provider, then fallbacks, within the job deadline
    retry.py    one provider call's retries: backoff, jitter, Retry-After
    finish.py   job_ended: the steps after any terminal write (worker, cancel, expiry)
"""
