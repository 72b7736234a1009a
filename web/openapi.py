"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``), written out by hand."""

from __future__ import annotations

from typing import Any

from mattermail.version import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {media: {"schema": schema}}},
            **{code: {"$ref": f"#/components/responses/{name}"}
               for code, name in (("400", "BadRequest"), ("401", "Unauthorized"), ("403", "Forbidden"),
                                  ("404", "NotFound"))}}


def _param(name: str, where: str, schema: dict[str, Any], text: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": text, "required": required or where == "path"}


_PAGING = [_param("page", "query", {"type": "integer", "minimum": 1}, "page number, from 1"),
           _param("per_page", "query", {"type": "integer", "minimum": 1, "maximum": 500},
                  "messages per page (default web.page_size)")]
_THREAD = _param("thread", "query", {"type": "string", "enum": ["1"]},
                 "1: group the page's messages by thread (subject without Re:/Fwd:)")
_MID = _param("message", "path", {"type": "integer"}, "message id")
_BINARY = {"type": "string", "format": "binary"}


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]] = (), media: str = "application/json"):
    return {"get": {"summary": summary, "parameters": list(params), "responses": _ok(schema, media)}}


def document() -> dict[str, Any]:
    page = {"type": "object", "properties": {
        "total": {"type": "integer"}, "page": {"type": "integer"}, "per_page": {"type": "integer"},
        "next": {"type": ["string", "null"]}, "messages": {"type": "array", "items": _ref("MessageSummary")},
        "threads": {"type": "array", "items": {"type": "object", "properties": {
            "thread": {"type": "string"}, "messages": {"type": "array", "items": _ref("MessageSummary")}}}}}}
    error = {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mattermail API", "version": __version__,
                 "description": "Matters, persons and their filed mail, behind ethical walls. Every request "
                                "carries Authorization: Bearer TOKEN (mattermailctl api token create). A matter "
                                "or message behind a wall answers 404, as one that does not exist."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/matters": _get("The matters this user may see, with their message counts",
                                    {"type": "object", "properties": {"matters": {"type": "array",
                                                                                  "items": _ref("Matter")}}}),
            "/api/v1/matters/{matter}/messages": _get(
                "A matter's messages, newest first", page,
                [_param("matter", "path", {"type": "string"}, "matter id"), *_PAGING, _THREAD]),
            "/api/v1/persons": _get("Persons, with the count of their messages this user may see",
                                    {"type": "object", "properties": {"persons": {"type": "array",
                                                                                  "items": _ref("Person")}}}),
            "/api/v1/persons/{person}/messages": _get(
                "A person's messages, newest first", page,
                [_param("person", "path", {"type": "integer"}, "person id"), *_PAGING, _THREAD]),
            "/api/v1/messages/{message}": _get("One message: headers, readable text, filings, attachments",
                                               _ref("Message"), [_MID]),
            "/api/v1/messages/{message}/raw": _get("The message as stored (RFC 5322)", _BINARY, [_MID],
                                                   "message/rfc822"),
            "/api/v1/messages/{message}/attachments/{index}": _get(
                "One attachment, as a download", _BINARY,
                [_MID, _param("index", "path", {"type": "integer"}, "1-based")], "application/octet-stream"),
            "/api/v1/search": _get("Full-text search (words, \"phrases\", word*, OR, -word, subject:word)",
                                   {"type": "object", "properties": {
                                       "q": {"type": "string"}, "page": {"type": "integer"},
                                       "next": {"type": ["string", "null"]},
                                       "hits": {"type": "array", "items": _ref("MessageSummary")}}},
                                   [_param("q", "query", {"type": "string"}, "the words", True),
                                    _param("matter", "query", {"type": "string"}, "only this matter"), *_PAGING]),
            "/api/v1/unfiled": _get("The unfiled queue (admins)", page, _PAGING),
            "/api/v1/messages/{message}/refile": {"post": {
                "summary": "Refile a message to a matter (admins, write scope); recorded in the records chain",
                "parameters": [_MID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["matter", "reason"],
                    "properties": {"matter": {"type": "string"}, "reason": {"type": "string"}}}}}},
                "responses": _ok(_ref("Message"))}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"BadRequest": error, "Unauthorized": error, "Forbidden": error, "NotFound": error},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "status": {"type": "integer"}, "code": {"type": "string", "enum": [
                        "bad_request", "unauthorized", "forbidden", "not_found", "unavailable"]},
                    "message": {"type": "string"}}}}},
                "Matter": {"type": "object", "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "string"},
                    "persons": {"type": "array", "items": {"type": "string"}}, "messages": {"type": "integer"}}},
                "Person": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "addresses": {"type": "array", "items": {"type": "string"}}, "messages": {"type": "integer"}}},
                "MessageSummary": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "subject": {"type": "string"}, "from": {"type": "string"},
                    "date": {"type": "string", "format": "date-time"}, "direction": {"type": "string"},
                    "size": {"type": "integer"}, "sha256": {"type": "string"}, "message_id": {"type": "string"},
                    "system": {"type": "boolean"}, "snippet": {"type": "string"}}},
                "Message": {"allOf": [_ref("MessageSummary"), {"type": "object", "properties": {
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "text": {"type": "string"}, "raw_url": {"type": "string"},
                    "filings": {"type": "array", "items": {"type": "object"}},
                    "attachments": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "filename": {"type": "string"},
                        "content_type": {"type": "string"}, "size": {"type": "integer"},
                        "url": {"type": "string"}}}}}}]},
            },
        },
    }
