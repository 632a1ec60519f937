"""sdserve's shared package: what the gateway (``app``), the worker (``worker``) and the webhook dispatcher
(``dispatcher``) all build on. It imports none of them, nor FastAPI, nor torch.

    contract/   the vocabulary: job statuses and events, the problem catalogue, limits, shared request fields
    jobs/       the job engine's shared parts: records, Lua scripts, runs, presence, the janitor, kinds
    images/     image generation, the first kind of work: its requests and its job view
    storage/    object storage: local files, S3
    webhooks/   the SSRF guard, signing, one delivery, delivery records
    registry/   what can be asked for: models, LoRAs, embeddings, styles
    access/     API keys
    observe/    logs, metrics, traces, the Redis check
    cli/        the `sdserve` command, `sdserve up`, `sdserve generate`
    keys.py, settings.py, secrets.py, kinds.py
"""

__version__ = "0.1.0"
