"""OpenAPI 3.1 description of the server's REST endpoints (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from events.wire import API_KEY_HEADER, Route

__all__ = ["OPENAPI_SPEC"]

_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
# A path is never empty and never holds a NUL byte (both get a 400).
_PATH_SCHEMA = {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"}
_PATH_PARAM = {"name": "path", "in": "query", "required": True, "schema": _PATH_SCHEMA}
_TAR_BODY = {"schema": {"type": "string", "format": "binary"}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_UNAUTHORIZED = {"description": f"missing or wrong {API_KEY_HEADER}", "content": _TEXT}

OPENAPI_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "openhands-rt action execution server", "version": "1"},
    "components": {
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}
    },
    "security": _KEY,
    "paths": {
        Route.ALIVE: {
            "get": {
                "security": [],
                "responses": {
                    "200": {"description": "initialized", "content": _TEXT},
                    "503": {"description": "still initializing", "content": _TEXT},
                },
            }
        },
        Route.SERVER_INFO: {
            "get": {
                "responses": {
                    "200": {
                        "description": "uptime, idle time, resources",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _UNAUTHORIZED,
                }
            }
        },
        Route.FILES: {
            "get": {
                "parameters": [
                    {
                        "name": "path",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[^\\u0000]*$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "directory listing",
                        "content": {"application/json": {"schema": {"type": "array"}}},
                    },
                    "400": {"description": "bad path", "content": _TEXT},
                    "401": _UNAUTHORIZED,
                    "403": {"description": "permission denied", "content": _TEXT},
                    "404": {"description": "no such directory", "content": _TEXT},
                },
            }
        },
        Route.DOWNLOAD: {
            "get": {
                "parameters": [_PATH_PARAM],
                "responses": {
                    "200": {
                        "description": "a tar stream of the file or directory",
                        "content": {"application/x-tar": {"schema": {"type": "string"}}},
                    },
                    "400": {"description": "bad path, or not readable", "content": _TEXT},
                    "401": _UNAUTHORIZED,
                    "403": {"description": "permission denied", "content": _TEXT},
                    "404": {"description": "no such file", "content": _TEXT},
                },
            }
        },
        Route.UPLOAD: {
            "post": {
                "parameters": [_PATH_PARAM],
                "requestBody": {
                    "required": True,
                    # Any media type is read as a tar (gzip, bzip2 or xz compressed or not).
                    "content": {
                        "application/x-tar": _TAR_BODY,
                        "application/octet-stream": _TAR_BODY,
                    },
                },
                "responses": {
                    "200": {
                        "description": "extracted",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": {
                        "description": "unsafe, invalid, too many members or a compression bomb",
                        "content": _TEXT,
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
    },
}
