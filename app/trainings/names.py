"""The name of a training's result: reserved at submit, the caller's adapter once it succeeded, gone with it.

A thin layer over ``sdserve.registry.owned`` that answers in HTTP terms: a name (or an embedding's token) the
caller or the registry already has is a 409 ``conflict`` that says which.
"""

from __future__ import annotations

from typing import Literal

from app.state import GatewayState
from sdserve.contract.problems import Conflict
from sdserve.registry.specs import ModelSpec


async def reserve(
    state: GatewayState,
    owner: str,
    kind: Literal["lora", "embedding"],
    name: str,
    trigger_word: str,
    training_id: str,
    spec: ModelSpec,
) -> None:
    """Take ``name`` (and an embedding's token) for this training, or refuse with 409."""
    token = trigger_word if kind == "embedding" else None
    reservation = await state.owned.reserve(owner, kind, name, training_id, token=token, registry=state.registry)
    if not reservation:
        raise Conflict(f"name: {reservation.reason}; choose another name")


async def release(state: GatewayState, owner: str, name: str, training_id: str) -> None:
    """Give the name back (the submit failed after reserving it)."""
    await state.owned.release(owner, name, training_id)


async def users(state: GatewayState, owner: str, name: str, training_id: str) -> list[str]:
    """The queued or running jobs that use the adapter this training made (none when it made none)."""
    adapter = await state.owned.get(owner, name)
    if adapter is None or adapter.training_id != training_id:
        return []
    return await state.owned.users(owner, name)


async def drop(state: GatewayState, owner: str, name: str, training_id: str) -> None:
    """Remove the adapter this training made (or its reservation); 409 if a job started using it meanwhile."""
    deletion = await state.owned.delete(owner, name, training_id=training_id)
    if deletion.users:
        raise Conflict(f"{name!r} is used by queued or running jobs ({', '.join(deletion.users[:10])})")
    await state.owned.release(owner, name, training_id)
