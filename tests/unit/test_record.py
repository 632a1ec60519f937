"""The job record's codec: ``to_fields`` / ``from_hash`` are the only way a record becomes a hash and back."""

from __future__ import annotations

import json

import pytest

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.problems import WORKER_LOST
from sdserve.jobs.record import ANONYMOUS, STRUCTURED, JobError, JobRecord, encode_fields, from_hash, to_fields
from sdserve.jobs.tracker import problem_error

FULL = JobRecord(
    id="01a2141e-8035-722a-ae56-08d956773a95",
    kind="image",
    task="inpaint",
    model="tiny",
    queue="tiny",
    status=JobStatus.FAILED,
    owner="acme",
    request={"prompt": "a cat", "width": 256, "loras": [{"name": "tiny-detail", "scale": 0.8}], "seed": None},
    created_at=1764700000.123456,
    started_at=1764700001.5,
    finished_at=1764700002.25,
    step=7,
    total=12,
    progress={"preview": "data:image/jpeg;base64,AAAA"},
    attempts=2,
    worker="w-1",
    result={"images": [{"index": 0, "key": "outputs/j/2/0.png"}], "manifest_key": "outputs/j/2/manifest.json"},
    error=problem_error(WORKER_LOST, "its worker died during each of its 2 runs"),
    timings={"queued_ms": 12.5, "run_ms": 900.0},
    metadata={"order": "42", "note": 'ünïcode, "quotes"'},
    inputs={"image": "inputs/j/image.png", "mask": "uploads/upl_0.png"},
    input_ids=["upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0"],
    webhook_url="https://example.com/hook",
    webhook_events=["succeeded", "failed"],
    cancel_requested=True,
    purged=False,
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    request_id="4f1c2a9e8b7d4c55a1f0e2d3c4b5a697",
    timeout=300,
    redeliveries=1,
)


def test_every_field_is_exercised() -> None:
    assert all(getattr(FULL, name) is not None for name in JobRecord.model_fields)
    assert set(to_fields(FULL)) == set(JobRecord.model_fields)


def test_round_trip_through_text_and_bytes() -> None:
    fields = to_fields(FULL)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert from_hash(fields) == FULL
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}  # what HGETALL answers
    assert from_hash(as_bytes) == FULL
    assert from_hash({k.encode(): v for k, v in fields.items()}) == FULL  # mixed, as a decoding client may give


def test_structured_fields_are_compact_json() -> None:
    json_fields = {"request", "progress", "result", "error", "timings", "metadata", "inputs", "input_ids"}
    assert frozenset({*json_fields, "webhook_events"}) == STRUCTURED
    fields = to_fields(FULL)
    for name in STRUCTURED:
        assert fields[name] == json.dumps(json.loads(fields[name]), separators=(",", ":")), name
    assert fields["webhook_events"] == '["succeeded","failed"]'
    assert fields["input_ids"] == '["upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0"]'
    assert json.loads(fields["request"]) == FULL.request  # a None inside JSON stays (it is the kind's data)
    assert json.loads(fields["error"]) == {
        "type": "/problems/worker-lost",
        "title": WORKER_LOST.title,
        "detail": "its worker died during each of its 2 runs",
    }
    assert json.loads(fields["metadata"]) == {"order": "42", "note": 'ünïcode, "quotes"'}


def test_scalars_are_text() -> None:
    fields = to_fields(FULL)
    assert fields["status"] == "failed"
    assert fields["cancel_requested"] == "1" and fields["purged"] == "0"
    assert fields["created_at"] == "1764700000.123456"  # repr: no precision lost
    assert fields["step"] == "7" and fields["timeout"] == "300"
    back = from_hash(fields)
    assert back.cancel_requested is True and back.purged is False
    assert isinstance(back.created_at, float) and back.created_at == FULL.created_at
    assert back.status is JobStatus.FAILED


def test_none_fields_are_left_out_and_defaults_come_back() -> None:
    bare = JobRecord(
        id="j1", kind="image", task="txt2img", queue="tiny", status=JobStatus.QUEUED, request={}, created_at=1.0
    )
    fields = to_fields(bare)
    absent = {"started_at", "finished_at", "worker", "error", "webhook_url", "traceparent", "request_id"}
    assert absent.isdisjoint(fields)
    assert fields["owner"] == ANONYMOUS
    assert fields["webhook_events"] == "[]" and fields["result"] == "{}"
    assert from_hash(fields) == bare
    minimal = {"id": "j1", "kind": "image", "task": "txt2img", "queue": "tiny", "status": "queued",
               "request": "{}", "created_at": "1.0"}  # fmt: skip
    assert from_hash(minimal) == bare


def test_empty_values_and_unknown_fields_are_ignored() -> None:
    fields = {**to_fields(FULL), "worker": "", "error": "", "rq_leftover": "x"}
    back = from_hash({k.encode(): v.encode() for k, v in fields.items()})
    assert back.worker is None and back.error is None
    assert back == FULL.model_copy(update={"worker": None, "error": None})


def test_encode_fields_encodes_like_to_fields() -> None:
    error = JobError(type="/problems/canceled", title="The job was canceled")
    encoded = encode_fields(status=JobStatus.CANCELED, error=error, cancel_requested=False, step=3, worker=None)
    assert encoded == {
        "status": "canceled",
        "error": '{"type":"/problems/canceled","title":"The job was canceled"}',  # None detail left out
        "cancel_requested": "0",
        "step": "3",
    }  # worker=None: not written at all
    assert encode_fields(**{name: getattr(FULL, name) for name in JobRecord.model_fields}) == to_fields(FULL)


@pytest.mark.parametrize("name", ["images", "manifest_key", "Status", "job_id", ""])
def test_encode_fields_refuses_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="not job record fields"):
        encode_fields(status=JobStatus.QUEUED, **{name: "x"})
