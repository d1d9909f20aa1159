"""Image providers: one module per vendor (plus the mock), all behind the `Provider`
protocol. Only workers call them.

    base.py       the seam: ProviderConfig, ProviderRequest, ProviderResult, Provider, Clock
    adapter.py    the one adapter base (operation check, configuration check, the one
                  scrubber) and each vendor's defaults (Vendor)
    upstream.py   one HTTP exchange: send, read an error response, download a result URL
    polling.py    following an asynchronous upstream task (Replicate, BFL)
    normalize.py  size / aspect ratio / resolution and mask conventions
    registry.py   the one table of vendors
    catalogue.py  the model catalogue (catalogue.toml, dated and sourced): per provider
                  its model families, their status, replacement and what they support
    pricing.py    prices (pricing.toml, dated and sourced, after [[pricing]]): what a
                  finished job cost, what a submit reserves against a budget
    hf_mapping.py a Hugging Face Hub repo -> the inference provider's model id
    <vendor>.py   openai, openai_compatible, azure, xai, nebius, gemini, vertex
                  (google_common), bedrock, huggingface, replicate, stability, bfl, mock
"""
