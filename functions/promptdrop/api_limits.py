"""The Gemini API's documented size limits, in one place: the emulator enforces them, promptdrop stays under them.

Sources (checked 2026-11-30): the Batch API guide (ai.google.dev/gemini-api/docs/batch-api: inline requests
"under 20 MB", a JSONL input file "2 GB"), the Files API (2 GB per file, 20 GB per project; reference
``shared/reference/gemini-batch-api.md`` §2.2, §7) and Google's blog "Increased file size limits and expanded
inputs support in Gemini API" (blog.google, 2026-01: inline data in a request from 20 MB to 100 MB). Google
writes "GB" / "MB" without saying decimal or binary: each limit here takes the stricter reading, so a
request under it is under the real one too. What Google answers past them is not documented (see
docs/EMULATOR.md); the emulator answers 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Final

# One file in the Files API, so one batch input file: "2 GB" read as 2,000,000,000 bytes (not 2 GiB).
FILE_MAX_BYTES: Final = 2_000_000_000
# The body of an inline batchGenerateContent call: "under 20 MB" read as 20,000,000 bytes.
BATCH_INLINE_MAX_BYTES: Final = 20 * 1000 * 1000
# The body of a generateContent call: inline data up to "100 MB" (base64 included) since 2026-01.
GENERATE_MAX_BYTES: Final = 100 * 1000 * 1000
