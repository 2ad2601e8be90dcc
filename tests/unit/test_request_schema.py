"""The request schema's closed messages are exactly what the google-genai SDK writes on the Gemini API wire.

The SDK's ``_*_to_mldev`` converters are the authority (read from their source: a private surface, so this
test fails loudly when they move). A field the SDK sends that our table lacks would make promptdrop refuse a
line Google takes; a field our table has that the SDK never sends would let a line through that Google may
refuse.
"""

from __future__ import annotations

import inspect
import re

import pytest
from google.genai import models as sdk_models
from google.genai import types

from promptdrop.request_schema import CLOSED, MESSAGES, TOP, UnknownField, unknown_fields

_SET = re.compile(r"setv\(\s*(to_object|parent_object),\s*\[([^\]]*)\]")


def sdk_wire_fields(converter: str) -> dict[str, set[str]]:
    """{"to_object"/"parent_object": field names} a converter writes (camelCase, as on the wire)."""
    source = inspect.getsource(getattr(sdk_models, converter))
    found: dict[str, set[str]] = {"to_object": set(), "parent_object": set()}
    for target, path in _SET.findall(source):
        found[target].add(path.split(",")[-1].strip().strip("'\""))
    assert found["to_object"] or found["parent_object"], f"{converter} wrote nothing: the SDK moved"
    return found


def test_generation_config_and_request_fields_match_the_sdk() -> None:
    config = sdk_wire_fields("_GenerateContentConfig_to_mldev")
    parameters = sdk_wire_fields("_GenerateContentParameters_to_mldev")
    assert set(MESSAGES["GenerationConfig"]) == config["to_object"]
    assert set(MESSAGES[TOP]) == config["parent_object"] | parameters["to_object"]


@pytest.mark.parametrize(
    ("message", "converter"),
    [
        ("Part", "_Part_to_mldev"),
        ("Content", "_Content_to_mldev"),
        ("ImageConfig", "_ImageConfig_to_mldev"),
        ("SafetySetting", "_SafetySetting_to_mldev"),
    ],
)
def test_closed_message_fields_match_the_sdk(message: str, converter: str) -> None:
    assert set(MESSAGES[message]) == sdk_wire_fields(converter)["to_object"]


@pytest.mark.parametrize(
    ("message", "sdk_type"),
    [("Blob", types.Blob), ("FileData", types.FileData), ("ThinkingConfig", types.ThinkingConfig)],
)
def test_messages_sent_whole_match_the_sdk_type(
    message: str, sdk_type: type[types._common.BaseModel]
) -> None:
    """The SDK sends these as its pydantic model dumps them (camelCase aliases of every field)."""
    camel = {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name) for name in sdk_type.model_fields}
    assert set(MESSAGES[message]) == camel


def test_unknown_fields_are_found_with_the_api_paths() -> None:
    request = {
        "contents": [{"parts": [{"text": "a"}, {"inline_data": {"data": "", "mime": "x"}}], "speaker": "me"}],
        "generation_config": {"imageConfig": {"size": "2K"}, "temperature": 1},
        "tools": [{"newTool": {}}],  # open message: passes
        "prompt": "a",
    }
    assert unknown_fields(request) == [
        UnknownField("mime", "contents[0].parts[1].inline_data"),
        UnknownField("speaker", "contents[0]"),
        UnknownField("size", "generation_config.image_config"),
        UnknownField("prompt", ""),
    ]
    assert {"Tool", "FunctionDeclaration"}.isdisjoint(CLOSED)


def test_unknown_field_messages_read_as_the_api_writes_them() -> None:
    nested = UnknownField("size", "generation_config.image_config")
    assert nested.api_message() == (
        "Invalid JSON payload received. Unknown name \"size\" at 'generation_config.image_config': "
        "Cannot find field."
    )
    assert nested.field_violation() == {
        "field": "generation_config.image_config",
        "description": nested.api_message(),
    }
    top = UnknownField("temperature", "")
    assert (
        top.api_message() == 'Invalid JSON payload received. Unknown name "temperature": Cannot find field.'
    )
    assert top.field_violation() == {"description": top.api_message()}
