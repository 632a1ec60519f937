"""The HTTP gateway: authenticate, validate, enqueue, report. Never imports torch or the worker."""
