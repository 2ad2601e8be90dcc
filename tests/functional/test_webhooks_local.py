"""Webhooks on the local path and in the emulator: the emulator's webhooks API through the real SDK, its
signed deliveries (retries, drops, duplicates, delays, no event for a cancelled batch), and `promptdrop run
--wait` / `serve` finishing runs on the push with the poller backed off."""

from __future__ import annotations

import base64
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.adapters.webhook_listener import WebhookListener
from promptdrop.emulator.options import EmulatorOptions, argument_parser, options_from_args
from promptdrop.testing.emulator import RunningEmulator, create_inline, wait_until_done
from promptdrop.webhooks import SignatureError, Verifier
from tests.functional.conftest import jsonl
from tests.functional.test_cli import CLI, cli_env, outputs, promptdrop, promptdrop_started

SECRET = "whsec_" + base64.b64encode(b"local-webhook-test-secret-93ab").decode()


@dataclass
class Inbox:
    """What a test receiver got: (headers, body) per attempt; answers from ``statuses`` first, then 200."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        with self.lock:
            self.got.append(({k.lower(): v for k, v in headers.items()}, body))
            return (self.statuses.pop(0) if self.statuses else 200), "ok"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= count:
                    return list(self.got)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.got)} deliveries, expected {count}")


@contextmanager
def receiver() -> Iterator[tuple[Inbox, WebhookListener]]:
    inbox = Inbox()
    with WebhookListener(inbox.handle, max_bytes=64 * 1024) as listener:
        yield inbox, listener


def sdk_batch(emulator: RunningEmulator, prompt: str = "a red kite") -> str:
    return create_inline(emulator.client(), prompt)


def test_the_sdk_creates_lists_and_deletes_webhooks_on_the_emulator(emulator_factory: Any) -> None:
    """client.webhooks.create/list/get/delete with base_url at the emulator; the secret comes back once."""
    client = emulator_factory().client()
    created = client.webhooks.create(
        name="promptdrop",
        subscribed_events=["batch.succeeded", "batch.failed", "batch.expired"],
        uri="https://x.example/hook",
    )
    assert created.id and created.new_signing_secret and created.new_signing_secret.startswith("whsec_")
    Verifier(created.new_signing_secret)  # a usable secret
    listed = client.webhooks.list().webhooks or []
    assert [(hook.id, hook.uri, hook.new_signing_secret) for hook in listed] == [
        (created.id, "https://x.example/hook", None)
    ]
    assert client.webhooks.get(id=created.id).new_signing_secret is None
    client.webhooks.delete(id=created.id)
    assert not client.webhooks.list().webhooks


def test_the_sdk_pages_through_webhooks_newest_first(emulator_factory: Any) -> None:
    """list(page_size=, page_token=) as the SDK sends them: every webhook once, newest first."""
    client = emulator_factory().client()
    made = [
        client.webhooks.create(subscribed_events=["batch.succeeded"], uri=f"https://x.example/{n}").id
        for n in range(5)
    ]
    seen: list[str | None] = []
    pages = 0
    token: str | None = None
    while True:
        page = client.webhooks.list(page_size=2, page_token=token)
        pages += 1
        seen += [hook.id for hook in page.webhooks or []]
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (made[::-1], 3)
    assert len(client.webhooks.list().webhooks or []) == 5  # 50 by default


@pytest.mark.parametrize(
    ("behavior", "old_still_signs"),
    [
        ("revoke_previous_secrets_after_h24", True),
        (None, True),
        ("revoke_previous_secrets_immediately", False),
    ],
    ids=["after-24h", "unspecified", "immediately"],
)
def test_a_rotated_secret_signs_deliveries_beside_the_old_one_for_24_hours(
    emulator_factory: Any, behavior: str | None, old_still_signs: bool
) -> None:
    """rotate_signing_secret returns the new secret once; deliveries then carry one signature per live
    secret, so a receiver holding either verifies (until the old one is revoked)."""
    with receiver() as (inbox, listener):
        emulator = emulator_factory()
        client = emulator.client()
        created = client.webhooks.create(subscribed_events=["batch.succeeded"], uri=listener.url)
        assert created.id and created.new_signing_secret
        old = created.new_signing_secret
        rotated = client.webhooks.rotate_signing_secret(id=created.id, revocation_behavior=behavior)  # type: ignore[arg-type]
        assert rotated.secret and rotated.secret.startswith("whsec_") and rotated.secret != old
        listed = client.webhooks.get(id=created.id)
        assert listed.new_signing_secret is None and listed.signing_secrets is not None
        assert [bool(s.expire_time) for s in listed.signing_secrets] == [False, True][: 1 + old_still_signs]
        sdk_batch(emulator)
        ((headers, body),) = inbox.wait_for(1)
        assert len(headers["webhook-signature"].split(" ")) == 1 + old_still_signs
        Verifier(rotated.secret).verify(body, headers, max_bytes=65536)
        if old_still_signs:
            Verifier(old).verify(body, headers, max_bytes=65536)
        else:
            with pytest.raises(SignatureError):
                Verifier(old).verify(body, headers, max_bytes=65536)
        with pytest.raises(Exception, match="404"):
            client.webhooks.rotate_signing_secret(id="unknown")


@pytest.mark.parametrize(
    ("marker", "event_type"),
    [
        ("", "batch.succeeded"),
        ("[[emulator:job=failed]] ", "batch.failed"),
        ("[[emulator:job=expired]] ", "batch.expired"),
    ],
)
def test_an_ended_batch_is_delivered_signed_to_flag_urls_and_registered_webhooks(
    emulator_factory: Any, marker: str, event_type: str
) -> None:
    """Both kinds of target get the event, each signed with its own secret, the body naming the batch."""
    with receiver() as (by_flag, flag_listener), receiver() as (by_api, api_listener):
        emulator = emulator_factory(webhook_urls=(flag_listener.url,), webhook_secret=SECRET)
        client = emulator.client()  # kept: the webhooks resource shares its HTTP client
        registered = client.webhooks.create(subscribed_events=[event_type], uri=api_listener.url)
        name = sdk_batch(emulator, marker + "a red kite")
        for inbox, secret in ((by_flag, SECRET), (by_api, str(registered.new_signing_secret))):
            ((headers, body),) = inbox.wait_for(1)
            assert Verifier(secret).verify(body, headers, max_bytes=65536) == orjson.loads(body)
            payload = orjson.loads(body)
            assert (payload["type"], payload["version"], payload["data"]["id"]) == (event_type, "v1", name)
            assert headers["webhook-id"].startswith("msg_")
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


def test_a_cancelled_batch_sends_batch_cancelled(emulator_factory: Any) -> None:
    """The webhooks guide (2026-09-24) adds batch.cancelled: a cancelled batch is pushed like the other ends."""
    with receiver() as (inbox, listener):
        emulator = emulator_factory(pending_seconds=30, webhook_urls=(listener.url,), webhook_secret=SECRET)
        client = emulator.client()
        name = create_inline(client, "a red kite")
        client.batches.cancel(name=name)
        wait_until_done(client, name)
        ((headers, body),) = inbox.wait_for(1)
        payload = Verifier(SECRET).verify(body, headers, max_bytes=65536)
        assert (payload["type"], payload["data"]["id"]) == ("batch.cancelled", name)


def test_a_batch_cancelled_push_ends_the_job_without_a_poll(tmp_path: Path, emulator_factory: Any) -> None:
    """A batch cancelled at the API (by hand, in the console) while `run --wait` listens: the push ends its
    job at once, with polling backed off to an hour (the only batches.get is the push's)."""
    emulator = emulator_factory(pending_seconds=60)
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_WEBHOOK_POLL_SECONDS="3600", PROMPTDROP_MAX_ATTEMPTS="1")
    prompt_file = tmp_path / "fruit.jsonl"
    prompt_file.write_bytes(jsonl(*PROMPTS))
    process = promptdrop_started(env, "run", str(prompt_file), "--wait", "--webhook-port", "0", cwd=tmp_path)
    try:
        client = emulator.client()
        deadline = time.monotonic() + 60
        while not (jobs := list(client.batches.list(config={"page_size": 10}))):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        assert jobs[0].name is not None
        client.batches.cancel(name=jobs[0].name)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - started < 30, stderr
    run_id = stdout.splitlines()[0].strip()
    summary = orjson.loads((outputs(home, run_id) / "summary.json").read_bytes())
    assert summary["jobs"][0]["state"] == "JOB_STATE_CANCELLED", summary
    stats = emulator.server.stats()
    assert stats["webhooks"]["delivered"] == 1
    assert stats["calls_by_route"]["get"] == 1


def test_a_refused_delivery_is_retried_with_the_same_id_and_a_fresh_signature(emulator_factory: Any) -> None:
    """Two 500s, then 200: three attempts, one webhook-id, each attempt verifying on its own."""
    with receiver() as (inbox, listener):
        inbox.statuses = [500, 500]
        emulator = emulator_factory(
            webhook_urls=(listener.url,), webhook_secret=SECRET, webhook_retry_seconds=0.05
        )
        sdk_batch(emulator)
        attempts = inbox.wait_for(3)
        assert len({headers["webhook-id"] for headers, _ in attempts}) == 1
        for headers, body in attempts:
            Verifier(SECRET).verify(body, headers, max_bytes=65536)
        time.sleep(0.3)
        stats = emulator.server.stats()["webhooks"]
        assert (stats["sent"], stats["failed_attempts"], stats["delivered"]) == (3, 2, 1)


def test_an_unreachable_receiver_is_given_up_after_the_attempts(emulator_factory: Any) -> None:
    with receiver() as (_, listener):
        url = listener.url
    emulator = emulator_factory(
        webhook_urls=(url,), webhook_secret=SECRET, webhook_retry_seconds=0.02, webhook_attempts=3
    )
    sdk_batch(emulator)
    deadline = time.monotonic() + 10
    while emulator.server.stats()["webhooks"]["given_up"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = emulator.server.stats()["webhooks"]
    assert (stats["sent"], stats["given_up"], stats["delivered"]) == (3, 1, 0)


@pytest.mark.parametrize(
    ("options", "copies"),
    [({"webhook_drop_rate": 1.0}, 0), ({"webhook_duplicate_rate": 1.0}, 2)],
)
def test_fault_controls_drop_and_duplicate_deliveries(
    emulator_factory: Any, options: dict[str, float], copies: int
) -> None:
    with receiver() as (inbox, listener):
        emulator = emulator_factory(webhook_urls=(listener.url,), webhook_secret=SECRET, **options)
        wait_until_done(emulator.client(), sdk_batch(emulator))
        time.sleep(0.4)
        assert len(inbox.got) == copies
        assert len({headers["webhook-id"] for headers, _ in inbox.got}) == min(copies, 1)


def test_delayed_deliveries_wait_before_their_first_try(emulator_factory: Any) -> None:
    with receiver() as (inbox, listener):
        emulator = emulator_factory(
            webhook_urls=(listener.url,), webhook_secret=SECRET, webhook_delay_seconds=0.8
        )
        ended = wait_until_done(emulator.client(), sdk_batch(emulator))
        assert ended.end_time is not None
        inbox.wait_for(1)
        assert time.time() - ended.end_time.timestamp() >= 0.7


def test_flags_take_repeated_urls_and_the_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--webhook-url repeats; the secret comes from a flag or PROMPTDROP_EMULATOR_WEBHOOK_SECRET and is never
    rendered back into flags (a command line is visible to every user)."""
    monkeypatch.setenv("PROMPTDROP_EMULATOR_WEBHOOK_SECRET", SECRET)
    args = argument_parser().parse_args(
        [
            "--webhook-url",
            "http://127.0.0.1:1/a",
            "--webhook-url",
            "http://127.0.0.1:2/b",
            "--webhook-drop-rate",
            "0.25",
        ]
    )
    options = options_from_args(args)
    assert options.webhook_urls == ("http://127.0.0.1:1/a", "http://127.0.0.1:2/b")
    assert options.webhook_secret == SECRET and options.webhook_drop_rate == 0.25
    argv = options.to_argv()
    assert SECRET not in " ".join(argv)
    assert options_from_args(argument_parser().parse_args(argv)) == options
    with pytest.raises(ValueError, match="add up to at most 1"):
        EmulatorOptions(webhook_drop_rate=0.7, webhook_duplicate_rate=0.7)


PROMPTS = [{"key": "apple", "prompt": "a red apple"}, {"key": "pear", "prompt": "a green pear"}]


def test_run_wait_finishes_on_the_push_with_polling_backed_off(tmp_path: Path, emulator_factory: Any) -> None:
    """`run --wait --webhook-port 0`: the CLI registers its listener with the emulator, the job's end arrives
    as a push and the run ends; the ticks never asked the API about the job (one batches.get: the push's)."""
    emulator = emulator_factory(pending_seconds=1.0)
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "fruit.jsonl"
    prompt_file.write_bytes(jsonl(*PROMPTS))

    done = promptdrop(env, "run", str(prompt_file), "--wait", "--webhook-port", "0", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "receiving batch webhooks on http://127.0.0.1:" in done.stderr
    run_id = done.stdout.splitlines()[0].strip()
    summary = orjson.loads((outputs(home, run_id) / "summary.json").read_bytes())
    assert summary["state"] == "SUCCEEDED"
    stats = emulator.server.stats()
    assert stats["webhooks"]["delivered"] == 1
    assert stats["calls_by_route"]["get"] == 1
    client = emulator.client()
    assert not client.webhooks.list().webhooks  # the registration went with the CLI


def test_serve_with_a_webhook_port_finishes_dropped_files_on_the_push(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """`serve --webhook-port 0` with a long tick: a file dropped into the inbox ends long before a tick
    would have asked about its job."""
    emulator = emulator_factory(pending_seconds=0.5)
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_POLL_INTERVAL="1")
    process = subprocess.Popen(
        [*CLI, "serve", "--webhook-port", "0"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    client = emulator.client()
    try:
        inbox = home / "bucket" / "inbox"
        deadline = time.monotonic() + 30
        while not client.webhooks.list().webhooks and time.monotonic() < deadline:
            time.sleep(0.05)
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / "fruit.jsonl").write_bytes(jsonl(*PROMPTS))
        summaries: list[Path] = []
        while not summaries and time.monotonic() < deadline:
            summaries = list((home / "bucket" / "outputs").glob("*/summary.json"))
            time.sleep(0.05)
        assert summaries, "no run finished"
        assert orjson.loads(summaries[0].read_bytes())["state"] == "SUCCEEDED"
        stats = emulator.server.stats()
        assert stats["webhooks"]["delivered"] == 1 and stats["calls_by_route"]["get"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert "receiving batch webhooks" in stderr
    assert not client.webhooks.list().webhooks
