"""The domain: what a job is, independent of how it is stored or served.

    jobs.py       the job record and its state machine (pure; the transition table)
    kinds.py      generations, edits, variations and their wire names
    models.py     ModelRef: `provider/model`, parsed once
    keys.py       virtual keys: the stored hash and a key's policy
    budget.py     money in micro-dollars, budget periods (UTC windows), a job's hold
    images.py     what an input image must be (format, pixels), however it arrives
    contract.py   a job's result and error as the contract's plain data
    wire.py       the typed enums' names <-> statuses and kinds
    errors.py     the one error tree, ErrorType / ErrorCode, the contract's ErrorBody
    constants.py  defaults and fixed limits, stated once

Nothing here does I/O or imports from the other layers (wire.py reads the generated
contract's enum names, `imagejobs.v1`).
"""
