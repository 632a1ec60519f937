"""The `sdserve` command: ``up`` (everything, for a laptop), ``gateway``, ``worker``, ``webhooks``,
``generate``, ``train``, ``keys new``, ``purge``.

``gateway``, ``worker`` and ``webhooks`` are dispatched by dotted path (like console-script entry points), so
the shared package depends on none of the process packages; ``up`` runs each as its own child process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from sdserve.cli import generate, train
from sdserve.observe.metrics import MetricsPortTaken
from sdserve.settings import Settings

QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

ENTRY_POINTS = {
    "gateway": "app.main:serve",
    "worker": "worker.main:serve",
    "webhooks": "dispatcher.main:serve",
}


def _entry(name: str) -> Callable[[Settings], None]:
    module, _, attr = ENTRY_POINTS[name].partition(":")
    func: Callable[[Settings], None] = getattr(importlib.import_module(module), attr)
    return func


def _settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        sys.exit(f"sdserve: invalid settings:\n{exc}")


def print_new_key(name: str, scopes: list[str]) -> int:
    """Make an API key; print it (the only time it is shown) and its keys-file entry."""
    from sdserve.access.api_keys import ApiKey, hash_key, new_key

    key = new_key()
    try:
        ApiKey.model_validate({"name": name, "sha256": hash_key(key), "scopes": scopes})
    except ValidationError as exc:
        print(f"sdserve keys: {exc}", file=sys.stderr)
        return 2
    quoted = ", ".join(f'"{s}"' for s in scopes)
    print(f"API key for {name} (shown once; give it to the caller):\n\n  {key}\n")
    print("Add this to the keys file (SDSERVE_API_KEYS_FILE):\n")
    print(f'[keys.{name}]\nsha256 = "{hash_key(key)}"\nscopes = [{quoted}]')
    print(f"\nor to SDSERVE_API_KEYS: {name}:{hash_key(key)}:{'+'.join(scopes)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdserve", description="Self-hosted Stable Diffusion inference service.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="Start Redis (if needed), the gateway and one worker; Ctrl-C stops them all.")
    gateway = sub.add_parser("gateway", help="Run the HTTP gateway.")
    for p in (up, gateway):
        p.add_argument("--host", help="Address to bind (SDSERVE_HOST).")
        p.add_argument("--port", type=int, help="Port to listen on (SDSERVE_PORT).")
    worker = sub.add_parser("worker", help="Run one worker (one per GPU).")
    sub.add_parser("webhooks", help="Run the webhook dispatcher (sends signed deliveries, with retries).")
    generate.add_parser(sub)
    train.add_parser(sub)
    keys = sub.add_parser("keys", help="Make an API key (prints it once, and the entry for the keys file).")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="Make a new API key.")
    new.add_argument("name", help="The key's name: the owner of the jobs it creates.")
    new.add_argument("--scopes", default="jobs", help="Comma-separated scopes: jobs, admin (default: jobs).")
    sub.add_parser(
        "purge", help="Delete stored objects older than SDSERVE_RETENTION_DAYS (stores without lifecycle rules)."
    )
    for p in (up, worker):
        p.add_argument("--models", help="Comma-separated models to serve (SDSERVE_WORKER_MODELS).")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        sys.exit(generate.run(args, _settings({})))
    if args.command == "train":
        sys.exit(train.run(args, _settings({})))
    if args.command == "keys":
        sys.exit(print_new_key(args.name, args.scopes.split(",")))
    overrides: dict[str, Any] = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "worker_models": getattr(args, "models", None),
    }
    settings = _settings(overrides)
    if args.command == "worker":
        # Library chatter (progress bars, deprecation notes) would break the one-JSON-line-per-event logs.
        for name, value in QUIET_LIBRARIES.items():
            os.environ.setdefault(name, value)
    if args.command == "purge":
        if settings.store != "s3":
            sys.exit("sdserve purge: only the s3 store is purged this way (local files follow retention on S3 only)")
        from sdserve.storage.s3 import S3Store

        print(f"purged {S3Store.from_settings(settings).purge_expired()} objects")
        return
    if args.command == "up":
        from sdserve.cli.up import Launcher

        sys.exit(Launcher(settings, overrides).run())
    try:
        _entry(args.command)(settings)
    except MetricsPortTaken as exc:
        sys.exit(f"sdserve {args.command}: {exc}")


if __name__ == "__main__":
    main()
