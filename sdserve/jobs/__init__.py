"""The job engine's shared parts: records, the Lua scripts that change them, runs, presence, the janitor.

Nothing here knows what a job computes: kinds of work (``sdserve.images``, ...) declare that. The gateway's
side of the engine lives in ``app.jobs``, the worker's in ``worker.engine``.
"""
