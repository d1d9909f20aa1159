"""Webhooks: signed, durable, at-least-once callbacks when a job ends.

    endpoints.py   the `[[webhooks]]` settings, events, the retry schedule
    signing.py     Standard Webhooks: whsec_ secrets, signatures, the three headers
    payload.py     the outbox intent a terminal writer publishes; the receiver's JSON body
    delivery.py    one job's delivery record (its history) and its state machine
    sender.py      one signed POST through the SSRF guard
    dispatcher.py  the process that takes owed deliveries from the outbox and attempts them
    history.py     what the API reads and does: list a job's deliveries, redeliver one

endpoints, signing, delivery and payload are pure and used by the layers below (config,
store, worker) as domain is; sender, dispatcher and history are the process part.
The outbox and the records live in the store (`store/outbox.py`, `store/deliveries.py`);
`dispatcher.py` explains why no crash loses a delivery that is owed.
"""
