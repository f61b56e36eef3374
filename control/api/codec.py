"""Request bodies in, JSON out: size limit, content types, JSON and YAML decoding.

Bodies are read here once, against the server's size limit (413 before the rest is
read when ``Content-Length`` already says too much), and decoded by content type:
JSON, or YAML (one document) for ``application/yaml``; anything else is a 415, and a
body that does not parse or is not an object is a 400 naming the problem. Patch bodies
keep their own content type (merge, strategic merge, JSON patch), see ``patch.py``.
Responses are always compact JSON.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from aiohttp import web

from control.api.errors import ApiError, bad_request, too_large, unsupported_media_type

JSON_TYPES = ("application/json", "*/*", "")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
PatchType = Literal["merge", "strategic", "json"]
PATCH_TYPES: dict[str, PatchType] = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(obj), status=status, content_type="application/json")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes with 413."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, media: str) -> Any:
    if not body.strip():
        raise bad_request("the request body is empty")
    if media in YAML_TYPES:
        try:
            docs = [d for d in yaml.safe_load_all(body) if d is not None]
        except yaml.YAMLError as e:
            raise bad_request(f"the request body is not valid YAML: {e}") from None
        if len(docs) != 1:
            raise bad_request(f"the request body must hold exactly one YAML document, "
                              f"found {len(docs)}")
        return docs[0]
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


def media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


async def read_object(request: web.Request, limit: int) -> dict[str, Any]:
    """Decode a create/update body (JSON or YAML) into an object."""
    media = media_type(request)
    if media not in JSON_TYPES and media not in YAML_TYPES:
        raise unsupported_media_type(media, ("application/json", "application/yaml"))
    obj = _parse(await read_body(request, limit), media)
    if not isinstance(obj, dict):
        raise bad_request(f"the request body must be an object, not "
                          f"{type(obj).__name__}")
    return obj


async def read_patch(request: web.Request, limit: int) -> tuple[PatchType, Any]:
    """Decode a PATCH body; its content type says which kind of patch it is."""
    media = media_type(request)
    kind = PATCH_TYPES.get(media)
    if kind is None:
        if media == "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType",
                           "server-side apply is not supported by this server; use "
                           "application/merge-patch+json or strategic-merge-patch+json")
        raise unsupported_media_type(media, tuple(PATCH_TYPES))
    doc = _parse(await read_body(request, limit), "application/json")
    if kind == "json" and not isinstance(doc, list):
        raise bad_request("a JSON patch must be a list of operations")
    if kind != "json" and not isinstance(doc, dict):
        raise bad_request("a merge patch must be a JSON object")
    return kind, doc
