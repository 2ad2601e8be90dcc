"""Pub/Sub as the ``Notifier``: run events go to the events topic.

The parsers of incoming messages (requests, storage notifications) are pure and live in
``promptdrop.events``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.pubsub_v1 import PublisherClient

from promptdrop.errors import ConfigurationError, TransientError

_TOPIC_PATH = re.compile(r"^projects/[^/]+/topics/[^/]+$")
# Attributes let subscribers filter (e.g. only FAILED runs) without decoding the data.
_ATTRIBUTES = ("run_id", "state")
# Retrying cannot create a topic or grant a permission.
_CONFIGURATION_ERRORS = (
    api_exceptions.NotFound,
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
)


class PubsubNotifier:
    """Publish each event as JSON to ``projects/PROJECT/topics/TOPIC`` and wait until Pub/Sub has it."""

    def __init__(
        self, topic_path: str, publisher: PublisherClient | None = None, *, timeout: float = 30.0
    ) -> None:
        if not _TOPIC_PATH.match(topic_path):
            raise ConfigurationError(
                f"events topic must be projects/PROJECT/topics/TOPIC, got {topic_path!r}"
            )
        self._topic = topic_path
        self._publisher = publisher if publisher is not None else PublisherClient()
        self._timeout = timeout

    @property
    def topic_path(self) -> str:
        return self._topic

    def publish(self, event: Mapping[str, Any]) -> None:
        attributes = {key: str(event[key]) for key in _ATTRIBUTES if event.get(key) is not None}
        data = orjson.dumps(dict(event))
        try:
            future = self._publisher.publish(self._topic, data, **attributes)
            future.result(timeout=self._timeout)
        except _CONFIGURATION_ERRORS as exc:
            raise ConfigurationError(
                f"cannot publish to {self._topic}: {type(exc).__name__} (does the topic exist, may we publish?)"
            ) from exc
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, TimeoutError) as exc:
            raise TransientError(f"publishing to {self._topic} failed: {type(exc).__name__}") from exc
