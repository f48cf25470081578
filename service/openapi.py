"""OpenAPI pieces shared by the routes: documented error responses and the auth scheme."""

from __future__ import annotations

from http import HTTPStatus

from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, Schema, SecurityScheme
from litestar.typing import FieldDefinition

from service.schemas import Problem

_WHEN = {
    400: "The request is invalid; `errors` names each field and why.",
    401: "The API key is missing or not valid.",
    404: "No such task for this API key.",
    409: "The task is not in a state that allows this.",
    413: "The body is larger than the server accepts.",
    422: "The Idempotency-Key was already used with a different request.",
    429: "Rate limited for this kind and API key; `Retry-After` says when to retry.",
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
        render_plugins=[ScalarRenderPlugin()],
        path="/schema",
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
