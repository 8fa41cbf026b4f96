"""The OpenAPI description of the upload endpoints: the multipart bodies and the error codes."""

from __future__ import annotations

from typing import Any


def multipart_body(**extra_properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI requestBody: a multipart form with a required 'file' photo plus `extra_properties`."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the photo"},
                        **extra_properties,
                    },
                }
            }
        },
    }


UPLOAD_BODY = multipart_body()
GRADCAM_BODY = multipart_body(
    label={"type": "string", "description": "class to explain (default: the most likely one)"},
    class_index={"type": "integer", "description": "class to explain, by index"},
)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty, truncated or undecodable photo, or a malformed request"},
    409: {"description": "Grad-CAM asked of a backend without gradients (onnx)"},
    413: {"description": "upload over the size limit, or a decompression bomb"},
    415: {"description": "not multipart/form-data, or the file is not an image"},
    422: {"description": "no 'file' field, or a bad parameter"},
}
IDENTIFY_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": 5,
                              "description": "1 to 5 photos of one plant (leaf, flower, whole plant)"},
                },
            }
        }
    },
}
