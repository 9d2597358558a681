"""OpenAPI 3.1 description of the server's REST endpoints (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI_SPEC"]

_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_PATH_PARAM = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_UNAUTHORIZED = {"description": "missing or wrong X-Session-API-Key", "content": _TEXT}

OPENAPI_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "openhands-rt action execution server", "version": "1"},
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Session-API-Key"}
        }
    },
    "security": _KEY,
    "paths": {
        "/alive": {
            "get": {
                "security": [],
                "responses": {
                    "200": {"description": "initialized", "content": _TEXT},
                    "503": {"description": "still initializing", "content": _TEXT},
                },
            }
        },
        "/server_info": {
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
        "/files": {
            "get": {
                "parameters": [{**_PATH_PARAM, "required": False}],
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
        "/download": {
            "get": {
                "parameters": [_PATH_PARAM],
                "responses": {
                    "200": {
                        "description": "a tar stream of the file or directory",
                        "content": {"application/x-tar": {"schema": {"type": "string"}}},
                    },
                    "400": {"description": "bad path", "content": _TEXT},
                    "401": _UNAUTHORIZED,
                    "404": {"description": "no such file", "content": _TEXT},
                },
            }
        },
        "/upload": {
            "post": {
                "parameters": [_PATH_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-tar": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {
                        "description": "extracted",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": {"description": "unsafe or invalid tar", "content": _TEXT},
                    "401": _UNAUTHORIZED,
                },
            }
        },
    },
}
