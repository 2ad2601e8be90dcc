"""The production ``BatchBackend``: google-genai against the Gemini API, or any endpoint that speaks it.

``PROMPTDROP_GEMINI_BASE_URL`` points the same code at the bundled emulator or a compatible gateway.
Every SDK failure leaves this module as a ``promptdrop.errors`` type whose message we build ourselves from
the HTTP status and the server's message, so the API key can never ride along in an error.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO

import orjson
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic.alias_generators import to_camel

from promptdrop.errors import (
    AmbiguousCreateError,
    BackendError,
    BackendPermanentError,
    BackendTransientError,
    ConfigurationError,
    NotFoundError,
    QuotaExceededError,
)
from promptdrop.models import ServedModels
from promptdrop.ports import BatchInfo, UploadedFile, WebhookRegistration, WebhookStatus
from promptdrop.rpc import HTTP_STATUS_NAMES
from promptdrop.settings import Settings
from promptdrop.states import JobState

# SDK 3.x defaults to v1; the Batch API docs and every example use v1beta.
GEMINI_API_VERSION = "v1beta"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
DOWNLOAD_CHUNK = 1024 * 1024
LIST_PAGE_SIZE = 100
MAX_SERVER_MESSAGE_CHARS = 500
# How long a models.list answer is reused by this process (every backend on the same endpoint and key): a
# run asks before its first batch, and a warm function instance submits many runs.
MODEL_CACHE_SECONDS = 300.0
_SERVED_CACHE: dict[
    tuple[str, int], tuple[ServedModels, float]
] = {}  # (endpoint, key hash) -> (answer, expiry)
_SERVED_LOCK = threading.Lock()

_BATCH_NAME = re.compile(r"batches/[^/?#\s]+")
# The Files API answers 403 "You do not have permission to access the File ... or it may not exist" for a
# file that expired (48 h) or was deleted, so for a delete both mean "already gone".
_FILE_GONE_CODES = frozenset({403, 404})


class BackendNotFoundError(BackendPermanentError, NotFoundError):
    """The batch job or file does not exist (HTTP 404): callers can catch it as ``NotFoundError``."""


def _transport_error_types() -> tuple[type[Exception], ...]:
    """Network failures of whichever HTTP stack the SDK runs on (httpx2 by default, httpx if chosen)."""
    found: list[type[Exception]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


_TRANSPORT_ERRORS = _transport_error_types()
# A 200 whose body the SDK cannot read is a failure too (a gateway's HTML page, a truncated body).
_UNREADABLE_RESPONSE = (genai_errors.UnknownApiResponseError, json.JSONDecodeError, pydantic.ValidationError)
_SDK_FAILURES: tuple[type[Exception], ...] = (
    genai_errors.APIError,
    *_UNREADABLE_RESPONSE,
    *_TRANSPORT_ERRORS,
)


def translate_error(exc: Exception, action: str, *, creating: bool = False, secret: str = "") -> BackendError:
    """Our typed error for an SDK failure: 408/429/5xx/network are transient, other 4xx permanent.

    ``creating`` marks ``batches.create``: every failure that may have happened after the server took the
    POST (timeout, dropped connection, 5xx, an unreadable 200) becomes ``AmbiguousCreateError`` so the
    caller looks the job up by display name before paying for a second one. 429 and other 4xx refused
    the request, so no job exists. ``secret`` (the API key) is cut out of the message wherever it appears.
    """
    error_type: type[BackendError]
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        server_message = str(exc.message or "")[:MAX_SERVER_MESSAGE_CHARS]
        detail = f"HTTP {code} {exc.status or ''}".rstrip() + (
            f": {server_message}" if server_message else ""
        )
        if code == 429:
            error_type = QuotaExceededError
        elif creating and (code == 408 or not 400 <= code < 500):
            error_type = AmbiguousCreateError
        elif code == 404:
            error_type = BackendNotFoundError
        elif code == 408 or code >= 500:
            error_type = BackendTransientError
        else:
            error_type = BackendPermanentError
    elif isinstance(exc, _UNREADABLE_RESPONSE):
        # Never echo the body: say what kind of failure it was.
        detail = f"unreadable response from the server ({type(exc).__name__})"
        error_type = AmbiguousCreateError if creating else BackendTransientError
    else:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        error_type = AmbiguousCreateError if creating else BackendTransientError
    message = f"{action} failed: {detail}"
    if secret:
        message = message.replace(secret, "[redacted]")
    return error_type(message)


# GenerateContentRequest fields that the SDK's generate_content takes in its config, beside the
# generationConfig fields; everything else but contents and model rides in the body as it is.
_REQUEST_CONFIG_FIELDS = frozenset(
    {"systemInstruction", "safetySettings", "tools", "toolConfig", "cachedContent"}
)


def generate_arguments(request: Mapping[str, Any]) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """A REST GenerateContentRequest (as a batch line carries it) -> ``generate_content``'s arguments.

    Parsed as JSON, so inline image data (base64 on the wire) decodes into bytes as the SDK expects. A field
    the SDK does not know yet is sent as it is through ``extra_body``, never dropped.
    """
    known = {to_camel(name) for name in types.GenerateContentConfig.model_fields}
    config: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in request.items():
        if name in {"contents", "model"}:
            continue
        if name == "generationConfig" and isinstance(value, Mapping):
            for field_name, field_value in value.items():
                if field_name in known:
                    config[field_name] = field_value
                else:
                    extra.setdefault("generationConfig", {})[field_name] = field_value
        elif name in _REQUEST_CONFIG_FIELDS:
            config[name] = value
        else:
            extra[name] = value
    if extra:
        config["httpOptions"] = {"extraBody": extra}
    contents = [
        types.Content.model_validate_json(orjson.dumps(item)) for item in request.get("contents") or []
    ]
    return contents, types.GenerateContentConfig.model_validate_json(orjson.dumps(config))


def batch_info_from_operation(raw: Mapping[str, Any]) -> BatchInfo:
    """A ``BatchInfo`` from the Operation JSON of ``GET batches/ID`` exactly as the server sent it.

    Built from the wire, not from the SDK's ``BatchJob``: on the Gemini API the SDK drops ``batchStats``
    and the Operation ``error`` (python-genai#1323), and it types ``JobError.details`` as ``list[str]``,
    so one inline error carrying a real ``google.rpc.Status`` (object details) makes ``batches.get``
    raise a pydantic ValidationError and the whole job unreadable. The wire form also keeps inline
    responses as the same camelCase dicts (base64 image data as strings) a results file holds, so
    harvest treats both alike.
    """
    metadata: Mapping[str, Any] = raw.get("metadata") or {}
    # The SDK reads only ``metadata``; the top-level ``response`` mirrors the output once the job is done.
    output: Mapping[str, Any] = metadata.get("output") or raw.get("response") or {}
    error: Mapping[str, Any] = raw.get("error") or {}
    error_message = error.get("message") or (f"error code {error['code']}" if error.get("code") else None)
    return BatchInfo(
        name=str(raw.get("name") or metadata.get("name") or ""),
        display_name=metadata.get("displayName"),
        state=JobState.parse(metadata.get("state")),
        model=metadata.get("model"),
        results_file=output.get("responsesFile"),
        inlined_responses=_inlined_responses(output),
        stats=_int_stats(metadata.get("batchStats") or {}),
        error=error_message,
    )


def _inlined_responses(output: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """``output.inlinedResponses.inlinedResponses``: the double nesting is how the API sends it."""
    outer = output.get("inlinedResponses")
    if outer is None:
        return None
    items = outer.get("inlinedResponses") if isinstance(outer, Mapping) else outer
    return [dict(item) for item in items or []]


def _int_stats(batch_stats: Mapping[str, Any]) -> dict[str, int]:
    """``batchStats`` counts are int64, so JSON strings on the wire; a zero count is left out by the API."""
    return {key: int(value) for key, value in batch_stats.items() if str(value).lstrip("-").isdigit()}


def _batch_info_from_job(job: types.BatchJob) -> BatchInfo:
    """A ``BatchInfo`` from the SDK's object, for create and list answers (no outputs, no stats)."""
    return BatchInfo(
        name=job.name or "",
        display_name=job.display_name,
        state=JobState.parse(job.state),
        model=job.model,
        results_file=job.dest.file_name if job.dest else None,
    )


class GeminiBackend:
    """``BatchBackend`` over the google-genai SDK (Files API + Batch API, Gemini Developer API mode)."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 120,
        retry_attempts: int = 5,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        client: genai.Client | None = None,
        now_base_url: str | None = None,
    ) -> None:
        if not api_key:
            raise ConfigurationError("the Gemini backend needs an API key (GEMINI_API_KEY)")
        self._secret = api_key  # kept only to cut it out of error messages
        self._owns_client = client is None
        self._base_url = (base_url or GEMINI_BASE_URL).rstrip("/")
        self._timeout_s = timeout_s
        retry = types.HttpRetryOptions(
            attempts=retry_attempts,
            initial_delay=initial_delay,
            max_delay=max_delay,
            # Jitter of up to one initial delay (the SDK's fixed default is 1 s whatever the delay).
            jitter=initial_delay,
        )

        def new_client(url: str | None) -> genai.Client:
            # The key is passed explicitly: left to itself the SDK prefers GOOGLE_API_KEY over
            # GEMINI_API_KEY, and vertexai=False keeps GOOGLE_GENAI_USE_VERTEXAI from switching the API.
            return genai.Client(
                vertexai=False,
                api_key=api_key,
                http_options=types.HttpOptions(
                    base_url=url,
                    api_version=GEMINI_API_VERSION,
                    timeout=int(timeout_s * 1000),  # milliseconds
                    retry_options=retry,
                ),
            )

        self._client = client or new_client(base_url)
        # The now lane may go to another endpoint (a Gemini-compatible gateway) while batches stay put.
        self._now_client = self._client
        if now_base_url and now_base_url.rstrip("/") != self._base_url:
            self._now_client = new_client(now_base_url)

    @classmethod
    def from_settings(cls, settings: Settings, base_url_override: str | None = None) -> GeminiBackend:
        """The backend the configuration names: its API key, and its base URL unless overridden."""
        if settings.api_key is None:
            raise ConfigurationError("the Gemini backend needs an API key (GEMINI_API_KEY)")
        return cls(
            settings.api_key.get_secret_value(),
            base_url=base_url_override or settings.gemini_base_url,
            timeout_s=settings.api_timeout,
            now_base_url=settings.now_base_url,
        )

    def close(self) -> None:
        """Release the HTTP connections of a client this backend built."""
        if self._now_client is not self._client:
            self._now_client.close()
        if self._owns_client:
            self._client.close()

    @contextmanager
    def _translated_errors(self, action: str, *, creating: bool = False) -> Iterator[None]:
        try:
            yield
        except _SDK_FAILURES as exc:
            raise translate_error(exc, action, creating=creating, secret=self._secret) from exc

    def upload_file(
        self, source: BinaryIO, *, size: int, display_name: str, mime_type: str = "jsonl"
    ) -> UploadedFile:
        """Stream ``source`` from its current position through the resumable upload (8 MiB chunks)."""
        if not isinstance(source, io.IOBase) or not source.seekable():
            raise TypeError("upload_file needs a seekable binary stream (an io.IOBase)")
        start = source.tell()
        remaining = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        if remaining != size:
            raise ValueError(f"upload of {display_name!r}: the stream holds {remaining} bytes, not {size}")
        config = types.UploadFileConfig(display_name=display_name, mime_type=mime_type)
        with self._translated_errors(f"upload {display_name}"):
            try:
                uploaded = self._client.files.upload(file=source, config=config)
            except _UNREADABLE_RESPONSE:
                raise
            except (ValueError, KeyError) as exc:
                # Our checks above rule out bad arguments, so these are the SDK's resumable-protocol
                # failures: no upload URL, or a chunk the server never confirmed.
                raise BackendTransientError(
                    f"upload {display_name} failed: the server did not complete the resumable upload"
                ) from exc
        if not uploaded.name:
            raise BackendTransientError(f"upload {display_name} failed: the server returned no file name")
        return UploadedFile(name=uploaded.name, uri=uploaded.uri or "")

    bucket_input = False  # inputs go through the Files API, results come back through it
    _info_from_job = staticmethod(_batch_info_from_job)

    def create_batch(
        self,
        *,
        model: str,
        file_name: str,
        display_name: str,
        priority: int = 0,
        output_uri: str | None = None,
    ) -> BatchInfo:
        """One POST with the SDK's retries off: a retried create would make (and bill) a second job.

        ``priority`` has no SDK field; it rides in the body through ``extra_body`` (the batch resource's
        int64 ``priority``, sent as a string like every int64 on the wire).
        """
        http_options = types.HttpOptions(
            retry_options=types.HttpRetryOptions(attempts=1),
            extra_body={"batch": {"priority": str(priority)}} if priority else None,
        )
        config = types.CreateBatchJobConfig(display_name=display_name, http_options=http_options)
        with self._translated_errors(f"create batch {display_name}", creating=True):
            job = self._client.batches.create(model=model, src=file_name, config=config)
        return _batch_info_from_job(job)

    def served_models(self) -> ServedModels:
        """``models.list``, every page: the ids served and their ``supportedGenerationMethods``.

        Cached for MODEL_CACHE_SECONDS per process; a failed call raises (TransientError) and is not cached.
        """
        cache_key = (self._base_url, hash(self._secret))
        now = time.monotonic()
        with _SERVED_LOCK:
            cached = _SERVED_CACHE.get(cache_key)
        if cached is not None and cached[1] > now:
            return cached[0]
        methods: dict[str, frozenset[str]] = {}
        with self._translated_errors("list models"):
            for info in self._client.models.list(config=types.ListModelsConfig(page_size=LIST_PAGE_SIZE)):
                if info.name:
                    methods[info.name.removeprefix("models/")] = frozenset(info.supported_actions or ())
        served = ServedModels(methods)
        with _SERVED_LOCK:
            _SERVED_CACHE[cache_key] = (served, now + MODEL_CACHE_SECONDS)
        return served

    def generate_content(
        self, *, model: str, request: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """``models.generate_content`` sent once: the now lane's one call.

        The SDK's retries are off for it: they would send a timed-out call again (a timeout is ambiguous: the
        API may be making, and billing, the image), so the caller counts each send and decides. ``timeout``
        (seconds; default the client's) bounds this call, so it fits the time budget left.
        An error the API answered becomes ``{"error": Status}`` (as a results line carries it, ``code`` the
        HTTP status); no answer at all (a timeout, a dropped connection) raises BackendTransientError.
        """
        bare = model.removeprefix("models/")
        action = f"generate with {bare}"
        try:
            contents, config = generate_arguments(request)
        except (pydantic.ValidationError, ValueError) as exc:
            # A request the SDK's types refuse would be refused by the API too: this line fails, alone.
            problem = exc.errors()[0]["msg"] if isinstance(exc, pydantic.ValidationError) else str(exc)
            message = (
                f"{action} failed: the SDK cannot send this request ({problem[:MAX_SERVER_MESSAGE_CHARS]})"
            )
            return {"error": {"code": 3, "status": "INVALID_ARGUMENT", "message": message}}
        config.http_options = (config.http_options or types.HttpOptions()).model_copy(
            update={
                "retry_options": types.HttpRetryOptions(attempts=1),
                "timeout": max(1, int((self._timeout_s if timeout is None else timeout) * 1000)),  # ms
            }
        )
        try:
            response = self._now_client.models.generate_content(model=bare, contents=contents, config=config)
        except genai_errors.APIError as exc:
            code = int(exc.code or 0)
            message = str(translate_error(exc, action, secret=self._secret))
            error: dict[str, Any] = {
                "code": code,
                "status": exc.status or HTTP_STATUS_NAMES.get(code),
                "message": message,
            }
            # The SDK keeps the JSON body in ``details``: its google.rpc details (RetryInfo) travel on, as the
            # now lane waits as a 429's RetryInfo says.
            body = exc.details.get("error") if isinstance(exc.details, dict) else None
            if isinstance(body, dict) and isinstance(body.get("details"), list):
                error["details"] = body["details"]
            return {"error": error}
        except _SDK_FAILURES as exc:
            raise translate_error(exc, action, secret=self._secret) from exc
        body = response.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude={"sdk_http_response", "automatic_function_calling_history", "parsed"},
        )
        return {"response": body}

    def find_batches(self, display_name: str) -> list[BatchInfo]:
        """Every batch named ``display_name``, oldest first, paging through every batch of the project."""
        with self._translated_errors(f"find batch {display_name}"):
            matches = [
                job
                for job in self._client.batches.list(
                    config=types.ListBatchJobsConfig(page_size=LIST_PAGE_SIZE)
                )
                if job.display_name == display_name
            ]
        matches.sort(key=lambda job: (job.create_time is None, job.create_time or datetime.min))
        return [self._info_from_job(job) for job in matches]

    def get_batch(self, name: str) -> BatchInfo:
        return batch_info_from_operation(self._get_operation_json(name))

    def _get_operation_json(self, name: str) -> dict[str, Any]:
        """``GET batches/ID`` through the SDK's own transport, answered as the raw Operation JSON.

        ``batches.get`` would parse into ``BatchJob`` and lose ``batchStats`` and the job error (see
        ``batch_info_from_operation``). ``BaseApiClient.request`` is what ``batches.get`` itself calls: the
        same URL building, key header, timeout and client-level retries, minus the lossy parsing. It is a
        private SDK API, so this is the one place that touches it, and tests/unit/test_private_surfaces.py
        fails loudly if it moves.
        """
        if not _BATCH_NAME.fullmatch(name):
            raise BackendPermanentError(f"not a batch job name: {name!r} (expected batches/ID)")
        with self._translated_errors(f"get {name}"):
            body = self._client._api_client.request("get", name, {}).body
        try:
            raw = orjson.loads(body or "")
        except orjson.JSONDecodeError:
            raw = None
        if not isinstance(raw, dict):
            raise BackendTransientError(
                f"get {name} failed: unreadable response from the server (no Operation)"
            )
        return raw

    def cancel_batch(self, name: str) -> None:
        with self._translated_errors(f"cancel {name}"):
            self._client.batches.cancel(name=name)

    def download_file(self, file_name: str, destination: BinaryIO, *, start: int = 0) -> None:
        """Stream the file from byte ``start`` into ``destination``, as the bytes arrive (at most 1 MiB a write).

        The Files API's documented media download (``GET /download/v1beta/files/ID:download?alt=media``) with
        a ``Range`` header, on the standard library's HTTP client: the SDK's ``files.download`` can neither
        ask for a range (it accepts only a 200) nor hand over less than a whole 1 MiB chunk, and a copy that
        a time budget may stop between parts needs both. A server that ignores the range answers 200 with
        the whole file, whose first ``start`` bytes are skipped. Downloads are not retried here: bytes
        already written cannot be taken back, so the caller resumes from what it recorded as written.
        """
        file_id = file_name.removeprefix("files/")
        url = f"{self._base_url}/download/{GEMINI_API_VERSION}/files/{file_id}:download?alt=media"
        request = urllib.request.Request(  # noqa: S310 - the configured API endpoint, http(s) only
            url, headers={"x-goog-api-key": self._secret, "Range": f"bytes={start}-"}
        )
        if not url.startswith(("https://", "http://")):
            raise ConfigurationError("the Gemini base URL must be http(s)")
        action = f"download {file_name} from byte {start}"
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                skip = start if response.status == 200 else 0
                if response.status == 206 and not str(response.headers.get("Content-Range", "")).startswith(
                    f"bytes {start}-"
                ):
                    raise BackendTransientError(f"{action} failed: the server sent another range")
                while block := response.read1(DOWNLOAD_CHUNK):
                    if skip:
                        dropped = min(skip, len(block))
                        skip -= dropped
                        block = block[dropped:]
                        if not block:
                            continue
                    destination.write(block)
        except urllib.error.HTTPError as exc:
            code = exc.code
            if code == 416:
                # The range starts at the end of the file: a copy stopped right after its last whole part.
                return
            error_type: type[BackendError] = (
                BackendNotFoundError
                if code == 404
                else BackendTransientError
                if code in (408, 429) or code >= 500
                else BackendPermanentError
            )
            raise error_type(f"{action} failed: HTTP {code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            message = f"{action} failed: {type(exc).__name__}: {reason}".replace(self._secret, "[redacted]")
            raise BackendTransientError(message) from None

    def delete_file(self, file_name: str) -> None:
        """Delete a file; one that is already gone (404, or the Files API's 403) is fine."""
        with self._translated_errors(f"delete {file_name}"):
            try:
                self._client.files.delete(name=file_name)
            except genai_errors.ClientError as exc:
                if exc.code not in _FILE_GONE_CODES:
                    raise

    # Static webhooks (the SDK's NextGen client: its errors are not genai_errors.APIError, so they are
    # translated here by status alone, never echoing a body or the key).

    def create_webhook(self, uri: str, *, events: Sequence[str], name: str) -> WebhookRegistration:
        try:
            created = self._client.webhooks.create(name=name, subscribed_events=list(events), uri=uri)  # type: ignore[arg-type]
        except Exception as exc:
            raise _webhook_error("create webhook", exc) from None
        if not created.id or not created.new_signing_secret:
            raise BackendPermanentError("create webhook failed: the answer has no id or signing secret")
        return WebhookRegistration(id=created.id, secret=created.new_signing_secret)

    def delete_webhook(self, webhook_id: str) -> None:
        try:
            self._client.webhooks.delete(id=webhook_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return
            raise _webhook_error(f"delete webhook {webhook_id}", exc) from None

    def list_webhooks(self) -> list[WebhookStatus]:
        found: list[WebhookStatus] = []
        token: str | None = None
        try:
            while True:
                page = self._client.webhooks.list(page_size=LIST_PAGE_SIZE, page_token=token)
                for hook in page.webhooks or []:
                    found.append(
                        WebhookStatus(
                            id=str(hook.id or ""),
                            uri=str(hook.uri or ""),
                            state=str(hook.state or "enabled"),
                            events=tuple(str(e) for e in hook.subscribed_events or ()),
                        )
                    )
                token = page.next_page_token
                if not token:
                    return found
        except Exception as exc:
            raise _webhook_error("list webhooks", exc) from None


def _webhook_error(action: str, exc: Exception) -> BackendError:
    status = getattr(exc, "status_code", None)
    detail = f"HTTP {status}" if isinstance(status, int) else type(exc).__name__
    transient = not isinstance(status, int) or status in (408, 429) or status >= 500
    return (BackendTransientError if transient else BackendPermanentError)(f"{action} failed: {detail}")
