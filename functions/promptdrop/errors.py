"""The project's typed errors.

The taxonomy drives retries: a ``TransientError`` may succeed if the same call is made again later
(the function boundary raises it so Eventarc redelivers; the poller retries with backoff), a
``PermanentError`` never will (it is recorded, and the function returns normally).
"""

from __future__ import annotations


class PromptdropError(Exception):
    """Base class of every error promptdrop raises on purpose."""


class TransientError(PromptdropError):
    """A temporary failure of infrastructure (5xx, 429, timeout, contention): retry later."""


class PermanentError(PromptdropError):
    """A failure that retrying cannot fix (bad input, bad configuration, refused by policy)."""


class ConfigurationError(PermanentError):
    """The settings are missing or contradictory."""


class InputError(PermanentError):
    """A prompt file or message cannot be used at all."""


class NotFoundError(PermanentError):
    """An object, file, run or batch job does not exist."""


class PreconditionFailedError(PermanentError):
    """A conditional write lost: the object or record already exists or changed meanwhile."""


class UnsafeNameError(PermanentError):
    """A name that came from outside would escape the folder it belongs in."""


class BackendError(PromptdropError):
    """Base for errors from the batch backend (Gemini API or the emulator)."""


class BackendTransientError(BackendError, TransientError):
    """The batch backend answered 408/429/5xx or did not answer in time."""


class BackendPermanentError(BackendError, PermanentError):
    """The batch backend refused the call (400/401/403/404...)."""


class OutOfTimeError(PromptdropError):
    """A long step stopped at its deadline, after keeping what it had done; the next call goes on from there."""


class QuotaExceededError(BackendTransientError):
    """The API answered 429 (RESOURCE_EXHAUSTED): a quota or rate limit, nothing was created."""


class AmbiguousCreateError(BackendTransientError):
    """``batches.create`` failed in a way that may still have created the job (timeout, 5xx).

    The caller must look the job up by display name before creating it again.
    """
