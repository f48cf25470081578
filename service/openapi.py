"""OpenAPI pieces shared by the routes: documented error responses and the auth scheme."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import swagger_ui_bundle  # type: ignore[import-untyped]
from litestar import Router
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router
from litestar.typing import FieldDefinition

from service.schemas import Problem

_WHEN = {
    400: "The request is invalid; `errors` names each field and why.",
    401: "The API key is missing or not valid.",
    404: "No such task for this API key.",
    406: "The report cannot be produced in the requested `Accept` type or `format`.",
    409: "The task is not in a state that allows this (or its Idempotency-Key is still being processed).",
    413: "The body is larger than the server accepts.",
    415: "The body is not sent as `application/json`.",
    422: "The Idempotency-Key was already used with a different request.",
    429: "Rate limited for this kind and API key; `Retry-After` says when to retry.",
    500: "Our fault, logged (for a report: it could not be rendered in that format; `type` says so).",
    503: "A dependency (Redis) is unreachable; retry later.",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """Problem+json responses for ``statuses``, for a route's OpenAPI description."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=f"{HTTPStatus(status).phrase}: {_WHEN[status]}",
            media_type="application/problem+json",
        )
        for status in statuses
    }


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Agent Farm",
        version=version,
        description="Run LLM agent crews as durable background jobs.",
        components=Components(
            security_schemes={"BearerAuth": SecurityScheme(type="http", scheme="bearer", description="An API key.")}
        ),
        security=[{"BearerAuth": []}],
        render_plugins=[
            SwaggerRenderPlugin(
                path="/swagger",
                js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                css_url=f"{ASSETS_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            )
        ],
        path="/schema",
    )


# Swagger UI's files, served by the API itself: the docs page works offline.
ASSETS_PATH = "/schema/assets"


def docs_assets() -> Router:
    """The static route serving the Swagger UI bundle at ``ASSETS_PATH``."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[swagger_ui_bundle.swagger_ui_path], include_in_schema=False
    )


@dataclass
class ReportOperation(Operation):
    """The report's 200 response: Markdown, and also the structured ``Report`` as JSON, an HTML page and a PDF."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if ok is not None and not isinstance(ok, Reference) and ok.content is not None:
            ok.content["text/markdown"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
            ok.content["application/json"] = OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Report"))
            ok.content["text/html"] = OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, description="A standalone, printable page with its sources.")
            )
            ok.content["application/pdf"] = OpenAPIMediaType(
                schema=Schema(
                    type=OpenAPIType.STRING,
                    content_media_type="application/pdf",
                    description="A4, fonts embedded (Cyrillic renders and extracts as text), sources at the end.",
                )
            )


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Says ``additionalProperties: false`` for structs that reject unknown fields.

    Litestar's own struct plugin leaves it out, so generated clients would not
    know that the API refuses fields it does not define.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
