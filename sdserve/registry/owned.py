"""Adapters owned by an API key: the LoRAs and embeddings its trainings made, usable by name by that key only.

A training reserves its result's name (and an embedding's token) when it is submitted, so a second training
of the same name is refused then; when it succeeds its reservation becomes the adapter (``commit``), in one
step. Names and tokens are per owner (two keys may each own a ``mystyle``) and never those of the registry.
Another key never sees an owned adapter: to it, the name is as unknown as any other.

The gateway notes which accepted jobs name an owned adapter (``note_use``, checking in the same step that it
is still there); ``users`` reads those jobs' records and answers which are still queued or running, and
``delete`` refuses while any is, so an adapter never disappears under a job that needs it. A job noted but
whose record does not exist yet (it is being accepted) counts as a user for ``NOTE_GRACE_SECONDS``.

Redis (keys from ``sdserve.keys``): one hash per owner, name → JSON (``state`` ``reserved`` or ``ready``), one
hash per owner, token → name, and per adapter a sorted set of the jobs that named it. Every change is one Lua
script; times are Redis's.

``OwnedAdapters`` runs on the asyncio client (the gateway), ``SyncOwnedAdapters`` on the blocking one (the
worker); both send the same scripts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import redis
import redis.asyncio as aioredis
from pydantic import ConfigDict, Field, field_validator, model_validator

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.limits import NAME_PATTERN
from sdserve.keys import Keys
from sdserve.registry.registry import Registry
from sdserve.registry.specs import (
    SHA256_PATTERN,
    STORE_FILE_PREFIX,
    EmbeddingSpec,
    LoraSpec,
    _FitsFamily,
    check_store_file,
)
from sdserve.replies import text

AdapterKind = Literal["lora", "embedding"]

EMBEDDING_WORD = r"^<[a-z0-9][a-z0-9._-]{0,62}>$"
"""The shape of an embedding's token (as the registry's)."""

NOTE_GRACE_SECONDS = 30.0
"""How long a job noted as using an adapter counts as a user before its record exists (it is being accepted)."""

RESERVATION_GRACE_SECONDS = 600.0
"""How long a reservation whose training record never appeared holds its name (a submit that failed after it)."""


class OwnedAdapter(_FitsFamily):
    """An adapter a training made, owned by the API key that trained it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AdapterKind
    name: str
    owner: str = Field(description="The API key's owner name.")
    training_id: str = Field(description="The training that made it.")
    file: str = Field(description="`store:<object key>` of its .safetensors file.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the file (hex).")
    size_bytes: int = Field(ge=0)
    created_at: float = Field(default=0.0, description="When it became usable (Unix seconds, Redis time; by commit).")
    default_scale: float = Field(default=1.0, ge=-2.0, le=2.0, description="A LoRA's scale when a job gives none.")
    trigger_words: list[str] = Field(default_factory=list)
    token: str | None = Field(default=None, pattern=EMBEDDING_WORD, description="An embedding's token.")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(f"invalid adapter name {value!r}")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return check_store_file(value)

    @model_validator(mode="after")
    def _token_fits_kind(self) -> OwnedAdapter:
        if (self.kind == "embedding") != (self.token is not None):
            raise ValueError("an embedding has a token, a LoRA has none")
        return self

    @property
    def key(self) -> str:
        """The object key of its file."""
        return self.file.removeprefix(STORE_FILE_PREFIX)

    def as_lora(self) -> LoraSpec:
        """Its registry-shaped spec (a LoRA)."""
        return LoraSpec(
            name=self.name, file=self.file, sha256=self.sha256, family=self.family, base_models=self.base_models,
            default_scale=self.default_scale, trigger_words=self.trigger_words, description=self.description,
        )  # fmt: skip

    def as_embedding(self) -> EmbeddingSpec:
        """Its registry-shaped spec (an embedding)."""
        assert self.token is not None
        return EmbeddingSpec(
            name=self.name, file=self.file, sha256=self.sha256, family=self.family, base_models=self.base_models,
            token=self.token, description=self.description,
        )  # fmt: skip


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` answered: true when the name (and token) are this training's now."""

    ok: bool
    reason: str = ""
    """Why not, for a 409's detail (empty when reserved)."""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Deletion:
    """What ``delete`` did: the adapter it removed, or the jobs that still use it (then nothing changed)."""

    deleted: OwnedAdapter | None = None
    users: list[str] | None = None
    """Queued or running jobs that name it (not deleted then); None when it was deleted or absent."""


def registry_conflict(registry: Registry, name: str, token: str | None) -> str | None:
    """Why a name (or token) cannot be owned: the deployment's registry has it (None: it may)."""
    if name in registry.loras:
        return f"the name {name!r} is a deployment LoRA's"
    if name in registry.embeddings:
        return f"the name {name!r} is a deployment embedding's"
    if token is not None and token in {e.token for e in registry.embeddings.values()}:
        return f"the token {token} is a deployment embedding's"
    return None


_STATUS = f"""
local QUEUED, RUNNING = '{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}'
local FAILED, CANCELED = '{JobStatus.FAILED.value}', '{JobStatus.CANCELED.value}'
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
"""

_STALE = """
-- A reservation whose training failed or was canceled, or never came to exist within the grace, holds nothing.
local function stale(entry, job_prefix, t, grace)
  if entry.state ~= 'reserved' then return false end
  local status = redis.call('HGET', job_prefix .. entry.training_id, 'status')
  if status then return status == FAILED or status == CANCELED end
  return t - entry.reserved_at > grace
end
local function drop_token(tokens, entry, name)
  if entry.token and redis.call('HGET', tokens, entry.token) == name then redis.call('HDEL', tokens, entry.token) end
end
"""

_RESERVE = (
    _STATUS
    + _STALE
    + """
-- KEYS[1] adapters, KEYS[2] tokens. ARGV: name, token ('' none), kind, training id, job prefix, grace.
local t = now()
local function free(name)
  local raw = redis.call('HGET', KEYS[1], name)
  if not raw then return true end
  local entry = cjson.decode(raw)
  if (entry.state == 'reserved' and entry.training_id == ARGV[4]) or stale(entry, ARGV[5], t, tonumber(ARGV[6])) then
    redis.call('HDEL', KEYS[1], name)
    drop_token(KEYS[2], entry, name)
    return true
  end
  return false
end
if not free(ARGV[1]) then return 'name' end
if ARGV[2] ~= '' then
  local holder = redis.call('HGET', KEYS[2], ARGV[2])
  if holder and holder ~= ARGV[1] and not free(holder) then return 'token' end
end
local entry = {state = 'reserved', kind = ARGV[3], training_id = ARGV[4], reserved_at = t}
if ARGV[2] ~= '' then
  entry.token = ARGV[2]
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 'ok'
"""
)

_RELEASE = """
-- KEYS[1] adapters, KEYS[2] tokens. ARGV: name, training id. Drops that training's reservation only.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
if entry.state ~= 'reserved' or entry.training_id ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if entry.token and redis.call('HGET', KEYS[2], entry.token) == ARGV[1] then redis.call('HDEL', KEYS[2], entry.token) end
return 1
"""

_COMMIT = (
    _STATUS
    + """
-- KEYS[1] adapters, KEYS[2] tokens. ARGV: name, training id, token ('' none), the adapter's JSON without its
-- closing brace (created_at is added here, on Redis's clock). The training's reservation becomes the adapter.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local entry = cjson.decode(raw)
if entry.training_id ~= ARGV[2] then return false end
if ARGV[3] ~= '' then
  local holder = redis.call('HGET', KEYS[2], ARGV[3])
  if holder and holder ~= ARGV[1] then return false end
end
if entry.token and entry.token ~= ARGV[3] and redis.call('HGET', KEYS[2], entry.token) == ARGV[1] then
  redis.call('HDEL', KEYS[2], entry.token)
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[1]) end
local stored = ARGV[4] .. ',"state":"ready","created_at":' .. string.format('%.6f', now()) .. '}'
redis.call('HSET', KEYS[1], ARGV[1], stored)
return stored
"""
)

_USERS = """
-- The noted jobs (KEYS[3]) still queued or running, or noted within the grace and not recorded yet; ended and
-- vanished ones are forgotten. ARGV[1] the job key prefix, ARGV[2] the grace.
local function users(t)
  local out = {}
  local noted = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #noted, 2 do
    local id, at = noted[i], tonumber(noted[i + 1])
    local status = redis.call('HGET', ARGV[1] .. id, 'status')
    if status == QUEUED or status == RUNNING or (not status and t - at < tonumber(ARGV[2])) then
      table.insert(out, id)
    else
      redis.call('ZREM', KEYS[3], id)
    end
  end
  return out
end
"""

_LIST_USERS = _STATUS + _USERS + "return users(now())\n"

_DELETE = (
    _STATUS
    + _USERS
    + """
-- KEYS[1] adapters, KEYS[2] tokens, KEYS[3] its users. ARGV: job prefix, grace, name, training id ('' any).
local raw = redis.call('HGET', KEYS[1], ARGV[3])
if not raw then return {'absent'} end
local entry = cjson.decode(raw)
if entry.state ~= 'ready' or (ARGV[4] ~= '' and entry.training_id ~= ARGV[4]) then return {'absent'} end
local busy = users(now())
if #busy > 0 then
  table.insert(busy, 1, 'in-use')
  return busy
end
redis.call('HDEL', KEYS[1], ARGV[3])
if entry.token and redis.call('HGET', KEYS[2], entry.token) == ARGV[3] then redis.call('HDEL', KEYS[2], entry.token) end
redis.call('DEL', KEYS[3])
return {'deleted', raw}
"""
)

_NOTE_USE = (
    _STATUS
    + """
-- KEYS[1] adapters, KEYS[2..] the users of each adapter. ARGV: job id, then per adapter its name and sha256.
-- All or nothing: returns the names no longer there (with that file); none missing, the job is noted on each.
local missing = {}
for i = 2, #KEYS do
  local name, sha = ARGV[2 * i - 2], ARGV[2 * i - 1]
  local raw = redis.call('HGET', KEYS[1], name)
  local entry = raw and cjson.decode(raw)
  if not entry or entry.state ~= 'ready' or entry.sha256 ~= sha then table.insert(missing, name) end
end
if #missing > 0 then return missing end
local t = now()
for i = 2, #KEYS do redis.call('ZADD', KEYS[i], t, ARGV[1]) end
return missing
"""
)

_BY_TOKENS = """
-- KEYS[1] adapters, KEYS[2] tokens. ARGV: tokens. The ready embeddings they name.
local out = {}
for _, token in ipairs(ARGV) do
  local name = redis.call('HGET', KEYS[2], token)
  local raw = name and redis.call('HGET', KEYS[1], name)
  if raw then
    local entry = cjson.decode(raw)
    if entry.state == 'ready' and entry.token == token then table.insert(out, raw) end
  end
end
return out
"""

_GET = """
-- KEYS[1] adapters. ARGV: names. Their raw entries (false where absent).
local out = {}
for i, name in ipairs(ARGV) do out[i] = redis.call('HGET', KEYS[1], name) or false end
return out
"""

_LIST = "return redis.call('HVALS', KEYS[1])\n"

SCRIPTS = {
    "reserve": _RESERVE,
    "release": _RELEASE,
    "commit": _COMMIT,
    "users": _LIST_USERS,
    "delete": _DELETE,
    "note_use": _NOTE_USE,
    "by_tokens": _BY_TOKENS,
    "get": _GET,
    "list": _LIST,
}

T = TypeVar("T")


@dataclass(frozen=True)
class _Op(Generic[T]):
    """One script call and how to read its reply (``script`` None: answered without Redis)."""

    script: str | None
    keys: list[str]
    args: list[Any]
    decode: Callable[[Any], T]


def _ready(raw: Any) -> OwnedAdapter | None:
    """An entry as an adapter (None for a reservation or nothing)."""
    if not raw:
        return None
    data = json.loads(text(raw))
    if data.pop("state", None) != "ready":
        return None
    return OwnedAdapter.model_validate(data)


class _Ops:
    """The operations, as script calls (shared by the asyncio and the blocking store)."""

    def __init__(self, keys: Keys, *, note_grace: float, reservation_grace: float) -> None:
        self.keys = keys
        self.note_grace = note_grace
        self.reservation_grace = reservation_grace

    def _pair(self, owner: str) -> list[str]:
        return [self.keys.owned_adapters(owner), self.keys.owned_tokens(owner)]

    def reserve(
        self, owner: str, kind: AdapterKind, name: str, training_id: str, token: str | None, registry: Registry | None
    ) -> _Op[Reservation]:
        conflict = registry_conflict(registry, name, token) if registry is not None else None
        if conflict is not None:
            refused = Reservation(False, conflict)
            return _Op(None, [], [], lambda _: refused)
        if (kind == "embedding") != (token is not None):
            raise ValueError("an embedding reserves its token, a LoRA none")

        def decode(reply: Any) -> Reservation:
            answer = text(reply)
            if answer == "ok":
                return Reservation(True)
            if answer == "name":
                return Reservation(False, f"you have an adapter (or a training) named {name!r} already")
            return Reservation(False, f"you have an embedding (or a training) with the token {token} already")

        args = [name, token or "", kind, training_id, self.keys.job_prefix(), self.reservation_grace]
        return _Op("reserve", self._pair(owner), args, decode)

    def release(self, owner: str, name: str, training_id: str) -> _Op[bool]:
        return _Op("release", self._pair(owner), [name, training_id], lambda reply: bool(int(reply)))

    def commit(self, adapter: OwnedAdapter) -> _Op[OwnedAdapter | None]:
        body = adapter.model_dump_json(exclude={"created_at"}, exclude_none=True)
        args = [adapter.name, adapter.training_id, adapter.token or "", body[:-1]]
        return _Op("commit", self._pair(adapter.owner), args, _ready)

    def users(self, owner: str, name: str) -> _Op[list[str]]:
        keys = [*self._pair(owner), self.keys.owned_users(owner, name)]
        return _Op("users", keys, [self.keys.job_prefix(), self.note_grace], lambda reply: [text(i) for i in reply])

    def delete(self, owner: str, name: str, training_id: str | None) -> _Op[Deletion]:
        def decode(reply: Any) -> Deletion:
            answer = [text(r) for r in reply]
            if answer[0] == "in-use":
                return Deletion(users=answer[1:])
            if answer[0] == "deleted":
                return Deletion(deleted=_ready(answer[1]))
            return Deletion()

        keys = [*self._pair(owner), self.keys.owned_users(owner, name)]
        args = [self.keys.job_prefix(), self.note_grace, name, training_id or ""]
        return _Op("delete", keys, args, decode)

    def note_use(self, owner: str, job_id: str, adapters: Sequence[OwnedAdapter]) -> _Op[list[str]]:
        if not adapters:
            return _Op(None, [], [], lambda _: [])
        if any(a.owner != owner for a in adapters):
            raise ValueError("a job notes only its owner's adapters")
        keys = [self.keys.owned_adapters(owner), *(self.keys.owned_users(owner, a.name) for a in adapters)]
        args: list[Any] = [job_id]
        for adapter in adapters:
            args += [adapter.name, adapter.sha256]
        return _Op("note_use", keys, args, lambda reply: [text(n) for n in reply])

    def by_tokens(self, owner: str, tokens: Iterable[str]) -> _Op[dict[str, OwnedAdapter]]:
        wanted = sorted(set(tokens))
        if not wanted:
            return _Op(None, [], [], lambda _: {})

        def decode(reply: Any) -> dict[str, OwnedAdapter]:
            found = [a for a in (_ready(raw) for raw in reply) if a is not None and a.token is not None]
            return {a.token: a for a in found if a.token is not None}

        return _Op("by_tokens", self._pair(owner), wanted, decode)

    def get_many(self, owner: str, names: Iterable[str]) -> _Op[dict[str, OwnedAdapter]]:
        wanted = sorted(set(names))
        if not wanted:
            return _Op(None, [], [], lambda _: {})

        def decode(reply: Any) -> dict[str, OwnedAdapter]:
            return {a.name: a for a in (_ready(raw) for raw in reply) if a is not None}

        return _Op("get", [self.keys.owned_adapters(owner)], wanted, decode)

    def list_owned(self, owner: str) -> _Op[list[OwnedAdapter]]:
        def decode(reply: Any) -> list[OwnedAdapter]:
            return sorted((a for a in (_ready(raw) for raw in reply) if a is not None), key=lambda a: a.name)

        return _Op("list", [self.keys.owned_adapters(owner)], [], decode)


class OwnedAdapters:
    """The owned adapters, on the asyncio client (the gateway)."""

    def __init__(
        self,
        connection: aioredis.Redis,
        keys: Keys,
        *,
        note_grace: float = NOTE_GRACE_SECONDS,
        reservation_grace: float = RESERVATION_GRACE_SECONDS,
    ) -> None:
        self._ops = _Ops(keys, note_grace=note_grace, reservation_grace=reservation_grace)
        self._scripts = {name: connection.register_script(source) for name, source in SCRIPTS.items()}

    async def _run(self, op: _Op[T]) -> T:
        if op.script is None:
            return op.decode(None)
        return op.decode(await self._scripts[op.script](keys=op.keys, args=op.args))

    async def reserve(
        self,
        owner: str,
        kind: AdapterKind,
        name: str,
        training_id: str,
        *,
        token: str | None = None,
        registry: Registry | None = None,
    ) -> Reservation:
        """Take a name (and an embedding's token) for a training, atomically; refused when the owner has it
        (adapter or another live training's reservation) or the registry does. The same training again: ok."""
        return await self._run(self._ops.reserve(owner, kind, name, training_id, token, registry))

    async def release(self, owner: str, name: str, training_id: str) -> bool:
        """Drop a training's reservation (it failed, was canceled or deleted); whether it held one."""
        return await self._run(self._ops.release(owner, name, training_id))

    async def commit(self, adapter: OwnedAdapter) -> OwnedAdapter | None:
        """The training's reservation becomes the adapter (usable at once); None when it holds none."""
        return await self._run(self._ops.commit(adapter))

    async def get(self, owner: str, name: str) -> OwnedAdapter | None:
        """One of the owner's adapters (None: no such adapter, or still training)."""
        return (await self.get_many(owner, [name])).get(name)

    async def get_many(self, owner: str, names: Iterable[str]) -> dict[str, OwnedAdapter]:
        """The owner's adapters among these names."""
        return await self._run(self._ops.get_many(owner, names))

    async def list_owned(self, owner: str) -> list[OwnedAdapter]:
        """Every adapter of the owner, by name."""
        return await self._run(self._ops.list_owned(owner))

    async def by_tokens(self, owner: str, tokens: Iterable[str]) -> dict[str, OwnedAdapter]:
        """The owner's embeddings among these tokens, by token."""
        return await self._run(self._ops.by_tokens(owner, tokens))

    async def note_use(self, owner: str, job_id: str, adapters: Sequence[OwnedAdapter]) -> list[str]:
        """Record that a job being accepted uses these adapters; the names no longer there (then nothing is noted)."""
        return await self._run(self._ops.note_use(owner, job_id, adapters))

    async def users(self, owner: str, name: str) -> list[str]:
        """The noted jobs naming an adapter that are still queued or running (or being accepted)."""
        return await self._run(self._ops.users(owner, name))

    async def delete(self, owner: str, name: str, *, training_id: str | None = None) -> Deletion:
        """Remove an adapter unless a queued or running job uses it (only that training's, when given). The
        object store's file is the caller's to delete."""
        return await self._run(self._ops.delete(owner, name, training_id))


class SyncOwnedAdapters:
    """The owned adapters, on the blocking client (the worker): the same operations."""

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        *,
        note_grace: float = NOTE_GRACE_SECONDS,
        reservation_grace: float = RESERVATION_GRACE_SECONDS,
    ) -> None:
        self._ops = _Ops(keys, note_grace=note_grace, reservation_grace=reservation_grace)
        self._scripts = {name: connection.register_script(source) for name, source in SCRIPTS.items()}

    def _run(self, op: _Op[T]) -> T:
        if op.script is None:
            return op.decode(None)
        return op.decode(self._scripts[op.script](keys=op.keys, args=op.args))

    def reserve(
        self,
        owner: str,
        kind: AdapterKind,
        name: str,
        training_id: str,
        *,
        token: str | None = None,
        registry: Registry | None = None,
    ) -> Reservation:
        """See ``OwnedAdapters.reserve``."""
        return self._run(self._ops.reserve(owner, kind, name, training_id, token, registry))

    def release(self, owner: str, name: str, training_id: str) -> bool:
        """See ``OwnedAdapters.release``."""
        return self._run(self._ops.release(owner, name, training_id))

    def commit(self, adapter: OwnedAdapter) -> OwnedAdapter | None:
        """See ``OwnedAdapters.commit``."""
        return self._run(self._ops.commit(adapter))

    def get(self, owner: str, name: str) -> OwnedAdapter | None:
        """See ``OwnedAdapters.get``."""
        return self.get_many(owner, [name]).get(name)

    def get_many(self, owner: str, names: Iterable[str]) -> dict[str, OwnedAdapter]:
        """See ``OwnedAdapters.get_many``."""
        return self._run(self._ops.get_many(owner, names))

    def list_owned(self, owner: str) -> list[OwnedAdapter]:
        """See ``OwnedAdapters.list_owned``."""
        return self._run(self._ops.list_owned(owner))

    def by_tokens(self, owner: str, tokens: Iterable[str]) -> dict[str, OwnedAdapter]:
        """See ``OwnedAdapters.by_tokens``."""
        return self._run(self._ops.by_tokens(owner, tokens))

    def note_use(self, owner: str, job_id: str, adapters: Sequence[OwnedAdapter]) -> list[str]:
        """See ``OwnedAdapters.note_use``."""
        return self._run(self._ops.note_use(owner, job_id, adapters))

    def users(self, owner: str, name: str) -> list[str]:
        """See ``OwnedAdapters.users``."""
        return self._run(self._ops.users(owner, name))

    def delete(self, owner: str, name: str, *, training_id: str | None = None) -> Deletion:
        """See ``OwnedAdapters.delete``."""
        return self._run(self._ops.delete(owner, name, training_id))
