"""A reference image rewritten between its hash and its read for sending, on any bucket adapter.

The local folder (tests/functional) and Cloud Storage on fake-gcs-server (tests/integration) run the same
story through the real adapters: the pay-once cache hashes ``refs/style.png``, then, at the first read of
its bytes for the request, someone rewrites it. The bytes sent and the fingerprint recorded for the image
made must name one version: never hashed from one and sent from another.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from typing import Any

import orjson
from PIL import Image

from promptdrop import prompts
from promptdrop.events import StorageObject
from promptdrop.states import RunState
from promptdrop.usecases import poll, receive
from promptdrop.usecases.cache import ImageDigests
from promptdrop.usecases.context import Context

REF = "refs/style.png"
MODEL = "gemini-3-pro-image"


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


class RewriteOnSend:
    """The bucket, where the read of ``name`` for sending finds it rewritten to ``new`` just before: the
    fault lands between the hash and the read. Inlined, that read is its first ``read_bytes``; uploaded to
    the Files API, its second ``open_read`` (the first is the hash)."""

    def __init__(self, inner: Any, name: str, new: bytes, *, uploaded: bool) -> None:
        self.inner, self.name, self.new, self.uploaded = inner, name, new, uploaded
        self.opened = 0
        self.fired = False
        self.requests: list[bytes] = []  # each job's request file, as its launch reads it to send it

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def _rewrite(self) -> None:
        self.fired = True
        self.inner.write_bytes(self.name, self.new, content_type="image/png")

    def read_bytes(self, name: str, **kwargs: Any) -> bytes:
        if name == self.name and not self.uploaded and not self.fired:
            self._rewrite()
        data: bytes = self.inner.read_bytes(name, **kwargs)
        return data

    def open_read(self, name: str, **kwargs: Any) -> Any:
        if name.endswith("/requests.jsonl"):
            self.requests.append(self.inner.read_bytes(name))
        if name == self.name and self.uploaded:
            self.opened += 1
            if self.opened == 2 and not self.fired:
                self._rewrite()
        return self.inner.open_read(name, **kwargs)


def rewritten_between_hash_and_send(ctx: Context, *, uploaded: bool = False) -> None:
    """Run one line with a reference image rewritten from red to blue between hash and read; assert that
    the blue bytes are sent (inlined; ``uploaded``: through the Files API, when the context's
    ``inline_image_max_bytes`` is below the image) and the image made is recorded under blue's fingerprint,
    never red's."""
    red, blue = png((200, 10, 10)), png((10, 10, 200))
    ctx.blobs.write_bytes(REF, red, content_type="image/png")
    line_input = {"key": "poster", "prompt": "restyle", "images": [REF]}
    (line,) = prompts.parse_prompt_file(
        io.BytesIO(orjson.dumps(line_input)), "jsonl", prompts.ParseOptions(default_model=MODEL)
    )
    assert isinstance(line, prompts.PromptRequest)
    red_print = ImageDigests(ctx).fingerprint(line, MODEL)

    blobs = RewriteOnSend(ctx.blobs, REF, blue, uploaded=uploaded)
    hooked = dataclasses.replace(ctx, blobs=blobs)
    name = ctx.settings.inbox_prefix + "style.jsonl"
    ctx.blobs.write_bytes(name, orjson.dumps(line_input) + b"\n")
    info = ctx.blobs.stat(name)
    assert info is not None
    receipt = receive.receive_file(
        hooked, StorageObject(ctx.settings.bucket_name, name, info.generation, info.size)
    )
    assert receipt.run is not None
    run_id = receipt.run.run_id
    for _ in range(200):
        run = ctx.store.get_run(run_id)
        assert run is not None
        if run.state.terminal:
            break
        poll.tick(hooked, run_ids=[run_id])
        time.sleep(0.05)  # a submission that failed transiently backs off (0.1 s in the tests)
    sent = [
        base64.b64decode(part["inlineData"]["data"])
        for request_file in blobs.requests
        for raw in request_file.splitlines()
        for part in orjson.loads(raw)["request"]["contents"][0]["parts"]
        if "inlineData" in part
    ]
    assert blobs.fired, "the reference image was never read for sending"
    assert run.state is RunState.SUCCEEDED, run
    # The live version, hashed again, not red's hash with blue's bytes (an upload is checked by its record).
    assert blobs.requests and set(sent) == (set() if uploaded else {blue})
    blue_print = ImageDigests(ctx).fingerprint(line, MODEL)
    assert red_print is not None and blue_print is not None and red_print != blue_print
    entry = ctx.paid_images.get(blue_print)
    assert entry is not None and entry.run_id == run_id
    assert ctx.paid_images.get(red_print) is None
