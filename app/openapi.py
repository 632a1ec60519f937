"""The OpenAPI document, completed: problem schemas, webhook payloads, common headers and errors.

FastAPI generates the operations from the routes; this adds what a generated SDK needs beyond them:
the ``Problem`` schema every error response refers to (and nothing but ``application/problem+json``
for errors), the ``500`` every operation can answer, the ``X-Request-ID`` header on every response,
the payload a webhook receiver gets, under ``webhooks``, and the security the server is configured with
(a bearer key, or none at all on a loopback gateway without keys).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import PROBLEM_JSON, FieldProblem, Problem, problem_responses
from sdserve.jobs.kind import JobKind

REQUEST_ID_HEADER = {
    "description": "The request's id (the client's own X-Request-ID if it sent a sane one); quote it in reports.",
    "schema": {"type": "string"},
}


def document_webhooks(app: FastAPI, kinds: list[JobKind]) -> None:
    """Declare the webhook each kind's `webhook.url` receives (OpenAPI 3.1 `webhooks`)."""
    for kind in kinds:
        payload = kind.webhook_model

        def receive(body: Any) -> None:
            """Receive an event."""

        receive.__annotations__["body"] = payload  # the kind's payload model itself (this module's are strings)

        app.webhooks.add_api_route(
            f"{kind.noun}-event",
            receive,
            methods=["POST"],
            summary=f"A {kind.noun} event, delivered to the {kind.noun}'s webhook URL",
            description="POSTed by the webhook dispatcher for each subscribed event (`started`, `progress`, "
            "`succeeded`, `failed`, `canceled`), signed per Standard Webhooks: headers `webhook-id` (the same on "
            "every retry of one event), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>`). "
            "Answer 2xx; anything else is retried for terminal events, except 410 Gone, which stops them.",
            operation_id=f"{kind.noun}EventWebhook",
            tags=["webhooks"],
        )


def build(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    """The completed document (cached on the app); ``secured``: the gateway has API keys configured."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        webhooks=app.webhooks.routes,
        tags=app.openapi_tags,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, FieldProblem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
        schemas.setdefault(model.__name__, schema)
    if secured:
        doc["components"]["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`sk_…`) as `Authorization: Bearer <key>`.",
            }
        }
    internal = problem_responses(500)[500]
    bad_request = problem_responses(400)[400]
    for path, path_item in doc.get("paths", {}).items():
        for operation in path_item.values():
            if secured and path.startswith("/v1/") and not path.startswith("/v1/files/"):
                operation["security"] = [{"apiKey": []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("500", internal)
            if "requestBody" in operation:  # a body that cannot be parsed at all (not UTF-8, broken multipart)
                responses.setdefault("400", bad_request)
            for code, response in responses.items():
                response.setdefault("headers", {}).setdefault("X-Request-ID", REQUEST_ID_HEADER)
                content = response.get("content", {})
                if code.startswith(("4", "5")) and PROBLEM_JSON in content:
                    content.pop("application/json", None)
    if "HTTPValidationError" not in json.dumps(doc["paths"]):  # every 422 is declared as a problem
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc
