"""The GenerateContentRequest as the Gemini API reads it: every message's field names, and which are closed.

The API parses a request as proto JSON: a field it does not know is an error, not ignored. A bad line in a
batch input file makes ``batchGenerateContent`` refuse the whole batch (HTTP 400 ``Error on line N: invalid
JSON, near column C: no such field: 'x'``, UKGovernmentBEIS/inspect_ai#3257); in an inline batch or a
``generateContent`` body it is ``400 INVALID_ARGUMENT`` ``Invalid JSON payload received. Unknown name "x"
at 'path': Cannot find field.`` with a ``google.rpc.BadRequest`` field violation (googleapis/python-genai
#1451). So promptdrop refuses such a line on its own (one line ``invalid``, the others run) and the emulator
refuses it as Google does; both read this table.

The field sets of the CLOSED messages are the ones the google-genai SDK writes on the Gemini API wire (its
``_*_to_mldev`` converters; ``tests/unit/test_request_schema.py`` compares them). The other messages (tools,
function calls) are open: their known fields are respelled, anything else passes as written, because
promptdrop does not check them and their schemas move fast. Values marked None are scalars, enums or
free-form JSON (schemas, function arguments) copied verbatim: their keys are the user's own names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

TOP: Final = "GenerateContentRequest"

MESSAGES: Final[dict[str, dict[str, str | None]]] = {
    TOP: {
        "model": None,
        "contents": "Content",
        "systemInstruction": "Content",
        "tools": "Tool",
        "toolConfig": "ToolConfig",
        "safetySettings": "SafetySetting",
        "generationConfig": "GenerationConfig",
        "cachedContent": None,
        "labels": None,
        "serviceTier": None,
        "store": None,
        "continuationToken": None,
    },
    "Content": {"role": None, "parts": "Part"},
    "Part": {
        "text": None,
        "thought": None,
        "thoughtSignature": None,
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": None,
        "codeExecutionResult": None,
        "videoMetadata": None,
        "mediaResolution": None,
        "partMetadata": None,
        "toolCall": None,
        "toolResponse": None,
        "speechMetadata": None,
        "audioMetadata": None,
        "audioTranscription": None,
        "documentMetadata": None,
        "spreadsheetMetadata": None,
        "mediaProcessing": None,
    },
    "Blob": {"mimeType": None, "data": None, "displayName": None},
    "FileData": {"mimeType": None, "fileUri": None, "displayName": None},
    "FunctionCall": {"id": None, "name": None, "args": None},
    "FunctionResponse": {
        "id": None,
        "name": None,
        "response": None,
        "willContinue": None,
        "scheduling": None,
    },
    "Tool": {
        "functionDeclarations": "FunctionDeclaration",
        "googleSearch": None,
        "googleSearchRetrieval": None,
        "codeExecution": None,
        "urlContext": None,
    },
    "FunctionDeclaration": {
        "name": None,
        "description": None,
        "behavior": None,
        "parameters": None,
        "parametersJsonSchema": None,
        "response": None,
        "responseJsonSchema": None,
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig"},
    "FunctionCallingConfig": {"mode": None, "allowedFunctionNames": None},
    "SafetySetting": {"category": None, "threshold": None},
    "GenerationConfig": {
        "stopSequences": None,
        "responseMimeType": None,
        "responseSchema": None,
        "responseJsonSchema": None,
        "responseModalities": None,
        "candidateCount": None,
        "maxOutputTokens": None,
        "temperature": None,
        "topP": None,
        "topK": None,
        "seed": None,
        "presencePenalty": None,
        "frequencyPenalty": None,
        "responseLogprobs": None,
        "logprobs": None,
        "enableEnhancedCivicAnswers": None,
        "mediaResolution": None,
        "speechConfig": None,
        "audioTranscriptionConfig": None,
        "thinkingConfig": "ThinkingConfig",
        "imageConfig": "ImageConfig",
    },
    "ThinkingConfig": {"includeThoughts": None, "thinkingBudget": None, "thinkingLevel": None},
    "ImageConfig": {"aspectRatio": None, "imageSize": None},
}

# Messages whose every field is listed above: an unknown name in one of them is refused by the API.
CLOSED: Final = frozenset(
    {
        TOP,
        "Content",
        "Part",
        "Blob",
        "FileData",
        "SafetySetting",
        "GenerationConfig",
        "ThinkingConfig",
        "ImageConfig",
    }
)


def snake_case(camel: str) -> str:
    """``generationConfig`` -> ``generation_config`` (the API's spelling of field paths in its errors)."""
    return re.sub(r"([A-Z])", r"_\1", camel).lower()


# message -> {spelling: camelCase name}: the API takes a field in either spelling.
SPELLINGS: Final[dict[str, dict[str, str]]] = {
    message: {**{snake_case(name): name for name in fields}, **{name: name for name in fields}}
    for message, fields in MESSAGES.items()
}


@dataclass(frozen=True, slots=True)
class UnknownField:
    """A field name the API does not know, as written, in the message at ``path``."""

    name: str
    path: str  # the API's style: "generation_config.image_config", "contents[0].parts[1]"; "" at the top

    def api_message(self) -> str:
        """The sentence the API answers with for this field (its proto JSON parser's wording)."""
        where = f" at '{self.path}'" if self.path else ""
        return f'Invalid JSON payload received. Unknown name "{self.name}"{where}: Cannot find field.'

    def field_violation(self) -> dict[str, str]:
        """Its entry in a ``google.rpc.BadRequest``'s ``fieldViolations`` (no ``field`` at the top)."""
        violation = {"field": self.path} if self.path else {}
        return {**violation, "description": self.api_message()}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def unknown_fields(value: object, message: str = TOP, path: str = "") -> list[UnknownField]:
    """Every field of ``value`` (a ``message``, or a list of them) the API would refuse, in order."""
    if isinstance(value, list):
        return [
            found
            for index, item in enumerate(value)
            for found in unknown_fields(item, message, f"{path}[{index}]")
        ]
    if not isinstance(value, Mapping):
        return []
    spellings = SPELLINGS[message]
    children = MESSAGES[message]
    found: list[UnknownField] = []
    for name, item in value.items():
        camel = spellings.get(str(name))
        if camel is None:
            if message in CLOSED:
                found.append(UnknownField(str(name), path))
            continue
        child = children[camel]
        if child is not None:
            found.extend(unknown_fields(item, child, _join(path, snake_case(camel))))
    return found
