"""The OpenAPI 3.1 document of an ``http`` source, and the JSON Schemas of its bodies.

The same schemas check the bodies the server reads (``http_ingress``) and describe
them in the document, so the two cannot drift apart. Every route, every status it
answers and every error body is here: ``GET /openapi.json`` serves this document.
"""

from __future__ import annotations

from typing import Any

from sporeflow.config.schema import NAME_PATTERN
from sporeflow.config.sources import HttpSource
from sporeflow.config.units import DURATION_PATTERN
from sporeflow.steps import PRIORITY_MAX, PRIORITY_MIN, SporeType

__all__ = ["SENT_TYPES", "openapi_document", "request_body_schema", "spore_body_schema"]

SENT_TYPES = (SporeType.KNOWLEDGE, SporeType.NOTIFICATION, SporeType.BROADCAST)
_YEAR = 365 * 24 * 3600
_MIN_REQUEST_TIMEOUT = 1.0

_name = {"type": "string", "pattern": NAME_PATTERN}
_priority = {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX,
             "description": "higher first (default 5)"}
_knowledge = {"type": "object", "description": "the spore's knowledge: any JSON object"}


def spore_body_schema(spec: HttpSource) -> dict[str, Any]:
    """``POST /spores``: a spore to an agent (``to``) or a channel (``channel``)."""
    schema: dict[str, Any] = {
        "type": "object", "additionalProperties": False, "required": ["knowledge"],
        "properties": {
            "to": {**_name, "description": "the agent it goes to"},
            "channel": {**_name, "description": "the channel it is broadcast on"},
            "knowledge": _knowledge,
            "type": {"enum": [str(t) for t in SENT_TYPES], "description": "the spore's type "
                     "(default knowledge to an agent, broadcast on a channel)"},
            "priority": _priority,
            "expires_in": {"anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": _YEAR},
                {"type": "string", "pattern": DURATION_PATTERN}],  # "30s", as in the YAML
                "description": "seconds (or a duration: 30s, 5m) after which it is "
                               "dead-lettered unhandled"},
        },
        "not": {"required": ["to", "channel"]},
    }
    if spec.to is None and spec.channel is None:  # no default target: the body names one
        schema["anyOf"] = [{"required": ["to"]}, {"required": ["channel"]}]
    return schema


def request_body_schema(spec: HttpSource) -> dict[str, Any]:
    """``POST /requests``: a request to an agent, answered with its response."""
    required = ["knowledge"] if spec.to is not None else ["to", "knowledge"]
    return {
        "type": "object", "additionalProperties": False, "required": required,
        "properties": {
            "to": {**_name, "description": "the agent asked"},
            "knowledge": _knowledge,
            "timeout": {"type": "number", "minimum": _MIN_REQUEST_TIMEOUT,
                        "maximum": spec.request_timeout,
                        "description": f"seconds to wait for the response (default and "
                                       f"most: {spec.request_timeout:g})"},
            "priority": _priority,
        },
    }


_ERROR = {
    "type": "object", "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, as a code: "
                  "unauthorized, too_large, bad_request, refused, full, not_running, "
                  "timeout, handler_failed, not_found, method_not_allowed"},
        "reason": {"type": "string", "description": "a refused spore's dead-letter reason "
                   "(unknown agent, not a peer, schema, limit exceeded, ...)"},
        "message": {"type": "string", "description": "what to do about it"},
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "integer", "minimum": 1}}}
_ERRORS = {
    "400": "the body is not JSON, or not of the documented shape",
    "401": "no bearer token, or a wrong one",
    "403": "refused: the source may not send there (not a peer, a publish list)",
    "404": "refused: no such agent or channel",
    "413": "the body is larger than limits.max_spore_bytes",
    "422": "refused: the spore breaks a rule (the recipient's schema, a limit, ...)",
    "429": "the organism stayed full: nothing was admitted; send it again later",
    "503": "the organism is not running (starting or stopping)",
}


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description,
                              "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _errors(*statuses: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    described = {**_ERRORS, **(extra or {})}
    return {status: _json({"$ref": "#/components/schemas/Error"}, described[status],
                          _RETRY_AFTER if status in ("429", "503") else None)
            for status in statuses}


def openapi_document(spec: HttpSource, *, organism: str, max_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``spec`` serving ``organism``."""
    secured = spec.token is not None
    protected: list[str] = ["401"] if secured else []
    accepted = {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string", "description": "the spore's id"},
        "status": {"const": "accepted"},
        "to": {"type": ["string", "null"]}, "channel": {"type": "string"}}}
    response = {"type": "object", "required": ["id", "reply_to", "from", "knowledge"],
                "properties": {"id": {"type": "string"},
                               "reply_to": {"type": "string", "description": "the request's id"},
                               "from": {"type": "string", "description": "the agent"},
                               "type": {"type": "string"}, "knowledge": {"type": "object"}}}

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}},
                "description": f"JSON, at most {max_bytes} bytes"}

    security: dict[str, Any] = {"security": [{"bearer": []}]} if secured else {}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"sporeflow organism {organism}: source {spec.name}",
                 "version": "1"},
        "paths": {
            "/spores": {"post": {
                "summary": "send a spore to an agent or a channel", **security,
                "requestBody": body(spore_body_schema(spec)),
                "responses": {"202": _json(accepted, "admitted: it will be handled"),
                              **_errors("400", *protected, "403", "404", "413", "422",
                                        "429", "503")}}},
            "/requests": {"post": {
                "summary": "send a request to an agent and wait for its response", **security,
                "requestBody": body(request_body_schema(spec)),
                "responses": {"200": _json(response, "the agent's response"),
                              **_errors("400", *protected, "403", "404", "413", "422", "429",
                                        "502", "503", "504", extra={
                                            "502": "the agent failed on the request",
                                            "504": "no response within the timeout"})}}},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
            "/healthz": {"get": {
                "summary": "whether the organism takes spores",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "it runs"),
                    "503": _json({"$ref": "#/components/schemas/Health"},
                                 "it does not run now (starting, stopping, failed)",
                                 _RETRY_AFTER)}}},
        },
        "components": {"schemas": {
            "Error": _ERROR,
            "Health": {"type": "object", "required": ["status", "organism"], "properties": {
                "status": {"enum": ["ok", "unavailable"]},
                "organism": {"type": "string", "description": "the organism's state"}}},
        }},
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": f"the token in ${spec.token_env}"}}
    return document
