"""The private attributes of client libraries promptdrop relies on: each fails here, loudly, when it moves.

Neither library offers a public way to do the same (a raw GET answered without the SDK's lossy parsing; the
size of the HTTP connection pool), so each is used in one function only, named in its test.
"""

from __future__ import annotations

import inspect

import requests
from google import genai
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import blob as storage_blob

from promptdrop.adapters.gcs import MULTIPART_MAX_BYTES, GcsBlobStore, widen_connection_pool


def test_genai_api_client_request_is_where_gemini_get_operation_json_expects_it() -> None:
    """GeminiBackend._get_operation_json calls client._api_client.request(method, path, dict).body."""
    client = genai.Client(api_key="unit-test-key", vertexai=False)
    try:
        request = client._api_client.request
        parameters = list(inspect.signature(request).parameters)
        assert parameters[:3] == ["http_method", "path", "request_dict"]
        # The answer is the SDK's public HttpResponse type, whose body is the raw JSON text.
        assert "HttpResponse" in str(inspect.signature(request).return_annotation)
        assert "body" in genai.types.HttpResponse.model_fields
    finally:
        client.close()


def test_storage_client_http_session_takes_a_wider_pool() -> None:
    """widen_connection_pool mounts its adapter on Client._http, the authorized requests.Session (which
    batch_statuses sends Cloud Storage batch requests through)."""
    client = storage.Client(project="unit-test", credentials=AnonymousCredentials())
    widen_connection_pool(client, 29)
    session = client._http
    assert isinstance(session, requests.Session)
    adapter = session.get_adapter("https://storage.googleapis.com/")
    assert adapter._pool_maxsize == 29  # type: ignore[attr-defined]


def test_the_multipart_size_limit_is_the_one_the_storage_library_uses() -> None:
    """GcsBlobStore.write_overhead charges a copy of each object up to this size (a multipart body)."""
    assert storage_blob._MAX_MULTIPART_SIZE == MULTIPART_MAX_BYTES
    store = GcsBlobStore("b", storage.Client(project="unit-test", credentials=AnonymousCredentials()))
    assert store.write_overhead(MULTIPART_MAX_BYTES) == MULTIPART_MAX_BYTES
    assert store.write_overhead(MULTIPART_MAX_BYTES + 1) == 0
