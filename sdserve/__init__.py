"""sdserve's contract and shared plumbing: job models, settings, registry, queue, store, events.

Imports neither FastAPI nor torch: the gateway (``app``) and the worker (``worker``) both build on it.
"""

__version__ = "0.1.0"
