"""The three Cloud Functions under functions-framework, with real CloudEvents in both HTTP encodings.

Every instance is ``functions/main.py`` loaded afresh by ``functions_framework.create_app`` and served by
its test client; behind it are the Firestore, Pub/Sub and Cloud Storage emulators (real Google clients)
and the Gemini emulator. Faults are injected with a ``FaultProxy`` in front of an emulator.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from promptdrop.adapters.firestore_store import FirestoreJobStore
from promptdrop.adapters.gcs import GcsBlobStore
from promptdrop.errors import ConfigurationError
from promptdrop.states import RunState
from promptdrop.testing import eventarc
from promptdrop.testing.cloud import LocalCloud
from promptdrop.testing.emulator import wait_until_done
from promptdrop.testing.faultproxy import FaultProxy
from promptdrop.usecases import harvest
from tests.support.deployment import Deployment, FunctionApp, race

pytestmark = pytest.mark.integration

PROMPTS = b"a red kite\na blue boat\na green hill\n"
ENCODINGS: list[eventarc.Encoding] = ["binary", "structured"]
FAST = 2.0  # seconds a client behind the fault proxy waits for an answer


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def assert_outputs(deployment: Deployment, run_id: str, keys: list[str]) -> None:
    """Images, manifest, summary and the run event are all there, for exactly ``keys``."""
    run = deployment.store.get_run(run_id)
    assert run is not None and run.state is RunState.SUCCEEDED
    images = deployment.images(run)
    assert sorted(images) == sorted(f"{run.output_folder}images/{key}.png" for key in keys)
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert [(entry["key"], entry["status"]) for entry in manifest] == [(key, "succeeded") for key in keys]
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["state"] == "SUCCEEDED" and summary["counts"]["succeeded"] == len(keys)
    (event,) = deployment.events(1)
    assert (event["run_id"], event["state"]) == (run_id, "SUCCEEDED")


# The captured shapes


CAPTURED_BUCKET = "promptdrop-demo-data"
CAPTURED_OBJECT = "inbox/catalogue.jsonl"
CAPTURED_GENERATION = "1718900000123456"
CATALOGUE = jsonl(*({"key": f"item-{n}", "prompt": f"catalogue item {n}"} for n in range(3)))


def retarget(value: Any, replacements: dict[str, str]) -> Any:
    """A captured sample with every mention of its bucket (etc.) replaced, inside base64 message data too,
    and nothing else changed: same fields, same nesting, same spellings."""
    if isinstance(value, dict):
        out = {key: retarget(item, replacements) for key, item in value.items()}
        message = out.get("message")
        if isinstance(message, dict) and message.get("data"):
            data = base64.b64decode(message["data"]).decode()
            message["data"] = base64.b64encode(retarget(data, replacements).encode()).decode()
        return out
    if isinstance(value, list):
        return [retarget(item, replacements) for item in value]
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
    return value


@pytest.mark.parametrize(
    ("sample", "target"),
    [
        ("eventarc-storage-notification", "on_prompt_file"),
        ("storage-object-finalized", "on_prompt_file"),
        ("eventarc-request-uri", "on_prompt_message"),
        ("eventarc-request-inline", "on_prompt_message"),
    ],
)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_captured_samples_aimed_at_this_deployment_start_their_run(
    deployment: Deployment, sample: str, target: str, encoding: eventarc.Encoding
) -> None:
    """Each captured shape, in either encoding, pointed at the test bucket (shape untouched) starts a run
    on the object or prompts it names: proof that the function parsed it."""
    # The captured uri request names requests/catalogue.jsonl; the file events name inbox/catalogue.jsonl.
    uploaded = "requests/catalogue.jsonl" if sample == "eventarc-request-uri" else CAPTURED_OBJECT
    generation, size = deployment.upload(uploaded, CATALOGUE)
    replacements = {
        CAPTURED_BUCKET: deployment.bucket,
        CAPTURED_GENERATION: generation,
        '"size": "1782"': f'"size": "{size}"',  # inside the notification's base64 payload
    }
    event = retarget(eventarc.load(sample), replacements)
    if sample == "storage-object-finalized":
        event["data"]["size"] = str(size)
    assert deployment.app(target).post(event, encoding) == 200
    run = deployment.only_run()
    if sample == "eventarc-request-inline":
        assert run.source.kind == "message"
        assert (run.counts.lines, run.counts.invalid) == (2, 0)  # the sample's two prompts
    else:
        assert (run.source.object, run.source.generation) == (uploaded, generation)
        assert (run.counts.lines, run.counts.invalid) == (3, 0)
    assert len(deployment.batches()) == 1


@pytest.mark.parametrize(
    ("sample", "target", "reason"),
    [
        (
            "eventarc-storage-notification",
            "on_prompt_file",
            f"ignored an object of bucket {CAPTURED_BUCKET} (this deployment serves {{bucket}})",
        ),
        (
            "storage-object-finalized",
            "on_prompt_file",
            f"ignored an object of bucket {CAPTURED_BUCKET} (this deployment serves {{bucket}})",
        ),
        (
            "eventarc-request-uri",
            "on_prompt_message",
            f"gs://{CAPTURED_BUCKET}/requests/catalogue.jsonl is not in this deployment's bucket gs://{{bucket}}",
        ),
    ],
)
def test_captured_samples_of_another_bucket_are_ignored_for_that_reason(
    deployment: Deployment, caplog: pytest.LogCaptureFixture, sample: str, target: str, reason: str
) -> None:
    """As captured, the samples name another deployment's bucket: 200, no run, and the log says why."""
    assert deployment.app(target).post(eventarc.load(sample)) == 200
    assert deployment.runs() == []
    messages = [record.getMessage() for record in caplog.records]
    assert any(reason.format(bucket=deployment.bucket) in message for message in messages), messages


def test_captured_scheduler_tick_advances_the_runs(deployment: Deployment) -> None:
    """The captured tick, posted as captured, drives a run whose batch is done to its end."""
    assert deployment.app("on_prompt_file").post(deployment.notification("inbox/tick.txt", PROMPTS)) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    wait_until_done(deployment.emulator.client(), job.batch_name)
    poller = deployment.app("poll_jobs")
    for encoding in ENCODINGS:
        assert poller.post(eventarc.load("eventarc-scheduler-tick"), encoding) == 200
    assert_outputs(deployment, run.run_id, ["line-1", "line-2", "line-3"])


def test_push_subscription_bodies_become_the_same_events(deployment: Deployment) -> None:
    """A raw Pub/Sub push body posted to /projects/P/topics/T (how infra/ wires the inbox) starts a run."""
    files = deployment.app("on_prompt_file")
    captured = eventarc.load("pubsub-push-storage-notification")
    assert files.push(captured, "projects/promptdrop-demo/topics/promptdrop-inbox") == 200
    assert deployment.runs() == []  # the sample's bucket is not ours

    event = deployment.notification("inbox/pushed.txt", PROMPTS)
    topic = f"projects/{deployment.project}/topics/promptdrop-inbox"
    assert files.push(eventarc.push_body(event), topic) == 200
    assert deployment.only_run().source.object == "inbox/pushed.txt"


# Runs from files and from messages


def _file_event(shape: str, bucket: str, name: str, generation: str, size: int) -> dict[str, Any]:
    if shape == "direct finalized":
        return eventarc.storage_finalized(bucket, name, generation, size)
    return eventarc.storage_notification(bucket, name, generation, size, payload=shape == "notification")


@pytest.mark.parametrize("shape", ["notification", "notification without payload", "direct finalized"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_file_event_runs_to_images_manifest_and_summary(
    deployment: Deployment, shape: str, encoding: eventarc.Encoding
) -> None:
    """Each shape of file event, in either encoding, claims the upload and the ticks finish its run."""
    generation, size = deployment.upload("inbox/kites.txt", PROMPTS)
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    event = _file_event(shape, deployment.bucket, "inbox/kites.txt", generation, size)
    assert files.post(event, encoding) == 200
    run = deployment.only_run()
    assert (run.source.object, run.source.generation) == ("inbox/kites.txt", generation)
    run = deployment.finish(poller, run.run_id)
    assert_outputs(deployment, run.run_id, ["line-1", "line-2", "line-3"])
    image = deployment.storage.bucket(deployment.bucket).get_blob(f"{run.output_folder}images/line-2.png")
    assert image is not None and image.content_type == "image/png"
    assert image.metadata == {"run": run.run_id, "key": "line-2", "model": run.model}


@pytest.mark.parametrize("kind", ["inline", "uri"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_request_message_runs_to_images_manifest_and_summary(
    deployment: Deployment, kind: str, encoding: eventarc.Encoding
) -> None:
    """A request with inline prompts and one naming a gs:// prompt file both run to their outputs."""
    prompts = [{"key": "kite", "prompt": "a red kite"}, {"key": "boat", "prompt": "a blue boat"}]
    if kind == "inline":
        body: dict[str, Any] = {"name": "kites", "prompts": prompts, "defaults": {"aspect_ratio": "16:9"}}
    else:
        deployment.upload("requests/kites.jsonl", jsonl(*prompts))
        body = {"uri": f"gs://{deployment.bucket}/requests/kites.jsonl"}
    messages, poller = deployment.app("on_prompt_message"), deployment.app("poll_jobs")
    assert messages.post(eventarc.request(body), encoding) == 200
    run = deployment.only_run()
    assert run.source.kind == ("message" if kind == "inline" else "uri")
    deployment.finish(poller, run.run_id)
    assert_outputs(deployment, run.run_id, ["kite", "boat"])


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """Whether a log line of this test contains ``text``."""
    return any(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("make_event", "reason"),
    [
        pytest.param(
            lambda bucket: eventarc.pubsub_event("eventarc-request-inline", b"{not json"),
            "the request message is not valid JSON",
            id="not json",
        ),
        pytest.param(
            lambda bucket: eventarc.request({"name": "empty", "prompts": []}),
            "an inline request needs a non-empty list 'prompts'",
            id="no prompts",
        ),
        pytest.param(
            lambda bucket: eventarc.request({"uri": "gs://another-bucket/a.jsonl"}),
            "gs://another-bucket/a.jsonl is not in this deployment's bucket",
            id="other bucket",
        ),
        pytest.param(
            lambda bucket: eventarc.request({"uri": f"gs://{bucket}/requests/gone.jsonl"}),
            "/requests/gone.jsonl does not exist",
            id="missing",
        ),
        pytest.param(
            lambda bucket: eventarc.request({"uri": f"gs://{bucket}/../etc/passwd"}),
            "uri object name",
            id="traversal",
        ),
    ],
)
def test_unusable_request_is_answered_200_and_starts_nothing(
    deployment: Deployment,
    caplog: pytest.LogCaptureFixture,
    make_event: Callable[[str], dict[str, Any]],
    reason: str,
) -> None:
    """A request that can never work is taken (no redelivery storm), starts no run and no batch, and the
    log says why."""
    assert deployment.app("on_prompt_message").post(make_event(deployment.bucket)) == 200
    assert deployment.runs() == []
    assert deployment.batches() == []
    assert logged(caplog, reason), [record.getMessage() for record in caplog.records]


# At least once: redeliveries and races


def _twice(deployment: Deployment, kind: str) -> tuple[str, list[dict[str, Any]]]:
    """(target, the two deliveries) of one piece of work arriving twice."""
    if kind == "file notification":
        event = deployment.notification("inbox/twice.txt", PROMPTS)
        return "on_prompt_file", [event, event]
    if kind == "inline request":
        event = eventarc.request({"name": "twice", "prompts": ["a red kite"]})
        return "on_prompt_message", [event, event]
    if kind == "inline request, same idempotency_key":
        body = {"name": "twice", "prompts": ["a red kite"]}
        key = {"idempotency_key": "order-1234"}
        return "on_prompt_message", [eventarc.request(body, key), eventarc.request(body, key)]
    deployment.upload("requests/twice.txt", PROMPTS)
    body = {"uri": f"gs://{deployment.bucket}/requests/twice.txt"}
    return "on_prompt_message", [eventarc.request(body), eventarc.request(body)]  # two message ids


KINDS = ["file notification", "inline request", "inline request, same idempotency_key", "uri request"]


@pytest.mark.parametrize("kind", KINDS)
def test_work_delivered_twice_gives_one_run_and_one_batch_job(deployment: Deployment, kind: str) -> None:
    """A redelivery (same event, or the same work in a second message) finds the claim and does nothing."""
    target, deliveries = _twice(deployment, kind)
    app = deployment.app(target)
    assert [app.post(event, encoding) for event, encoding in zip(deliveries, ENCODINGS, strict=True)] == [
        200,
        200,
    ]
    assert len(deployment.runs()) == 1
    assert len(deployment.batches()) == 1


@pytest.mark.parametrize("kind", ["file notification", "inline request"])
def test_one_event_at_two_instances_at_once_gives_one_batch_job(deployment: Deployment, kind: str) -> None:
    """Two instances handling the same event at the same instant create one run and one batch job."""
    target, (event, _) = _twice(deployment, kind)
    instances = [deployment.app(target) for _ in range(2)]
    assert race(2, lambda i: instances[i].post(event)) == [200, 200]
    assert len(deployment.runs()) == 1
    assert len(deployment.batches()) == 1


def test_two_pollers_at_once_harvest_each_job_once(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """Two overlapping ticks on a finished batch: one harvests it, once; one event; images never rewritten."""
    assert deployment.app("on_prompt_file").post(deployment.notification("inbox/race.txt", PROMPTS)) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    wait_until_done(deployment.emulator.client(), job.batch_name)
    pollers = [deployment.app("poll_jobs") for _ in range(2)]

    assert race(2, lambda i: pollers[i].post(eventarc.scheduler_tick())) == [200, 200]
    written = deployment.images(run)
    run = deployment.finish(pollers[1], run.run_id)

    assert [r.getMessage() for r in caplog.records].count("harvested") == 1
    (job,) = deployment.jobs(run.run_id)
    assert job.results_file is not None
    assert job.results_copy_done and job.results_copied > 0
    # The emulator sent the results file once, byte for byte (a log line can be reworded; this cannot).
    assert deployment.emulator.server.bytes_downloaded == job.results_copied
    assert len(written) == 3 and deployment.images(run) == written
    assert len(deployment.events(2, timeout=3)) == 1


def test_harvest_stopped_by_its_time_budget_resumes_and_writes_every_image_once(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny budget each tick harvests one checkpoint; the next tick resumes; nothing is written twice."""
    monkeypatch.setattr(harvest, "CHECKPOINT_LINES", 3)
    keys = [f"kite-{n:02d}" for n in range(10)]
    prompts = jsonl(*({"key": key, "prompt": f"kite number {key}"} for key in keys))
    assert deployment.app("on_prompt_file").post(deployment.notification("inbox/many.jsonl", prompts)) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    wait_until_done(deployment.emulator.client(), job.batch_name)
    poller = deployment.app("poll_jobs", PROMPTDROP_HARVEST_TIME_BUDGET="0.001")

    snapshots, current = deployment.image_snapshots(poller, run)
    # One checkpoint (3 results) per tick, each tick continuing where the previous one stopped.
    assert [len(images) for images in snapshots] == [3, 6, 9, 10]
    for earlier, later in itertools.pairwise(snapshots):
        assert {name: later[name] for name in earlier} == earlier  # same generation: not rewritten
    assert current is not None and current.state is RunState.SUCCEEDED
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert [entry["key"] for entry in manifest] == keys
    assert deployment.objects(run.output_folder + "_work/") == {}


# Permanent failures: recorded, answered 200


@pytest.mark.parametrize(
    ("name", "data", "env", "reason"),
    [
        ("inbox/prompts.csv", b"prompt,key\na red kite,kite\n", {}, "not a prompt file"),
        ("inbox/big.txt", b"a red kite\n" * 20, {"PROMPTDROP_MAX_FILE_BYTES": "64"}, "MAX_FILE_BYTES"),
    ],
)
def test_unusable_prompt_file_is_a_failed_run_with_the_reason_not_a_retry(
    deployment: Deployment, name: str, data: bytes, env: dict[str, str], reason: str
) -> None:
    """A file that cannot be used is answered 200 and ends FAILED with the reason; redelivery changes nothing."""
    files = deployment.app("on_prompt_file", **env)
    event = deployment.notification(name, data)
    assert files.post(event) == 200
    run = deployment.only_run()
    assert run.state is RunState.FAILED and reason in (run.reason or "")
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["state"] == "FAILED" and reason in summary["reason"]
    (notice,) = deployment.events(1)
    assert (notice["run_id"], notice["state"]) == (run.run_id, "FAILED")

    assert files.post(event) == 200
    assert len(deployment.runs()) == 1
    assert deployment.batches() == []


def test_all_garbage_prompt_file_fails_with_every_line_reported(deployment: Deployment) -> None:
    """A file with no usable line is answered 200 and ends FAILED, each line invalid with its reason."""
    garbage = b"\xff\xfe\x00binary\n{not json\n[1, 2, 3]\n"
    assert deployment.app("on_prompt_file").post(deployment.notification("inbox/junk.jsonl", garbage)) == 200
    run = deployment.only_run()
    assert run.state is RunState.FAILED
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["counts"] == {"lines": 3, "succeeded": 0, "failed": 0, "invalid": 3}
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert [(entry["line"], entry["status"]) for entry in manifest] == [(n, "invalid") for n in (1, 2, 3)]
    assert all(entry["error"]["message"] for entry in manifest)
    assert deployment.batches() == []


@pytest.mark.parametrize(
    ("name", "data", "options", "reason"),
    [
        ("requests/outside.txt", PROMPTS, {}, "outside the inbox prefix"),
        ("outputs/some-run/images/a.txt", PROMPTS, {}, "outside the inbox prefix"),
        ("inbox/empty.txt", b"", {}, "zero-byte object"),
        ("inbox/empty-no-payload.txt", b"", {"payload": False}, "zero-byte object"),
        ("inbox/.upload-in-progress.txt", PROMPTS, {}, "is a hidden file"),
        ("inbox/deleted.txt", PROMPTS, {"event_type": "OBJECT_DELETE"}, "ignored OBJECT_DELETE of"),
        (
            "inbox/metadata.txt",
            PROMPTS,
            {"event_type": "OBJECT_METADATA_UPDATE"},
            "ignored OBJECT_METADATA_UPDATE of",
        ),
    ],
)
def test_objects_that_are_not_new_inbox_files_are_ignored(
    deployment: Deployment,
    caplog: pytest.LogCaptureFixture,
    name: str,
    data: bytes,
    options: dict[str, Any],
    reason: str,
) -> None:
    """Objects outside the inbox, zero-byte and hidden objects, and non-finalize events: 200, no run, and
    the log names the object and why it was left alone (not some other way of starting nothing)."""
    assert deployment.app("on_prompt_file").post(deployment.notification(name, data, **options)) == 200
    assert deployment.runs() == []
    assert deployment.batches() == []
    messages = [record.getMessage() for record in caplog.records]
    assert any(name in message and reason in message for message in messages), messages


def test_objects_of_another_bucket_are_ignored(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """A notification for another bucket (a mis-wired trigger) is answered 200, starts nothing, and says so."""
    event = eventarc.storage_notification("another-bucket", "inbox/kites.txt", "1718900000123456", 42)
    assert deployment.app("on_prompt_file").post(event) == 200
    assert deployment.runs() == []
    assert logged(
        caplog, f"ignored an object of bucket another-bucket (this deployment serves {deployment.bucket})"
    )


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PROMPTDROP_BUCKET": "./bucket"}, "PROMPTDROP_BUCKET must be gs://NAME"),
        ({"PROMPTDROP_STORE": "sqlite:///state.db"}, "PROMPTDROP_STORE must be firestore"),
        ({"PROMPTDROP_BACKEND": "emulator"}, "PROMPTDROP_BACKEND must be gemini"),
        ({"GEMINI_API_KEY": None}, "GEMINI_API_KEY must be set"),
    ],
)
def test_in_the_cloud_the_functions_refuse_local_settings(
    deployment: Deployment, env: dict[str, str | None], problem: str
) -> None:
    """With K_SERVICE set, an instance will not even load on a local bucket, store or backend."""
    with pytest.raises(ConfigurationError, match=problem):
        deployment.app("poll_jobs", K_SERVICE="promptdrop-poller", **env)


# Transient failures: a 500, and Eventarc's redelivery completes the work


def _route_through(proxy: FaultProxy, app: FunctionApp, service: str, deployment: Deployment) -> None:
    """Point one instance's Firestore or Storage client at the proxy, with short timeouts and no retries."""
    ctx = app.context
    if service == "firestore":
        with pytest.MonkeyPatch.context() as patch:
            # The Firestore client reads the emulator address when it is built.
            patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
            client = firestore.Client(project=deployment.project)
        ctx.store = FirestoreJobStore(client, retry=None, timeout=FAST)
    else:
        client = storage.Client(
            project=deployment.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": proxy.url},
        )
        ctx.blobs = GcsBlobStore(deployment.bucket, client, retry=None, timeout=FAST)


def _redeliver(app: FunctionApp, event: dict[str, Any], attempts: int = 40) -> int:
    """Deliver until the function answers 200, as Eventarc does after a 500 (with a shorter backoff)."""
    status = 0
    for _ in range(attempts):
        status = app.post(event)
        if status == 200:
            break
        time.sleep(0.25)
    return status


def _proxy_address(cloud: LocalCloud, service: str) -> str:
    return cloud.endpoints.firestore_host if service == "firestore" else cloud.endpoints.storage_url


@pytest.mark.parametrize("service", ["firestore", "storage"])
def test_transient_failure_before_the_claim_is_a_503_without_traceback_and_redelivery_completes_the_run(
    deployment: Deployment, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Firestore (claiming) or Storage (looking up the object) down: 503 (Pub/Sub redelivers any non-2xx),
    logged as a warning naming the cause, with no traceback (an expected failure, not a bug); no run;
    healed: 200 and done."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    # Without a payload the function must look the object up before it can claim it.
    event = deployment.notification("inbox/flaky.txt", PROMPTS, payload=service == "firestore")
    with FaultProxy.for_address(_proxy_address(deployment.cloud, service)) as proxy:
        _route_through(proxy, files, service, deployment)
        proxy.reset()
        assert files.post(event) == 503
        assert deployment.runs() == []
        warned = [r for r in caplog.records if "transient failure claiming" in r.getMessage()]
        assert warned and all(r.exc_info is None for r in warned)
        assert not [r for r in caplog.records if r.exc_info is not None and r.levelname != "DEBUG"]
        proxy.pass_through()
        assert _redeliver(files, event) == 200
        run = deployment.finish(poller, deployment.only_run().run_id)
    assert_outputs(deployment, run.run_id, ["line-1", "line-2", "line-3"])
    assert len(deployment.batches()) == 1


def test_transient_storage_failure_after_the_claim_leaves_the_run_to_the_poller(
    deployment: Deployment,
) -> None:
    """Claimed, then Storage fails while submitting: 200 (no redelivery), RECEIVED with a backoff, ticks finish it."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    event = deployment.notification("inbox/later.txt", PROMPTS)
    with FaultProxy.for_address(deployment.cloud.endpoints.storage_url) as proxy:
        _route_through(proxy, files, "storage", deployment)
        proxy.reset()
        assert files.post(event) == 200
    run = deployment.only_run()
    assert run.state is RunState.RECEIVED and run.submit_attempts == 1
    assert (run.reason or "").startswith("retrying")
    assert deployment.batches() == []
    deployment.finish(poller, run.run_id)
    assert_outputs(deployment, run.run_id, ["line-1", "line-2", "line-3"])


def test_an_upload_session_lost_while_submitting_leaves_the_run_to_the_poller(deployment: Deployment) -> None:
    """The answer to an upload's last chunk is lost after Cloud Storage finished the object: the library
    sends the chunk again and the finished session answers 404. That is a lost session, not a missing
    object: the run waits in RECEIVED with a backoff, and the poller's ticks finish it."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    event = deployment.notification("inbox/lost-session.txt", PROMPTS)
    with FaultProxy.for_address(deployment.cloud.endpoints.storage_url) as proxy:
        client = storage.Client(
            project=deployment.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": proxy.url},
        )
        # The library's own retries on, as deployed: they are what send the lost chunk again.
        files.context.blobs = GcsBlobStore(deployment.bucket, client, timeout=FAST)
        proxy.cut_after(0, request=b"PUT /upload/")
        assert files.post(event) == 200
        assert proxy.cuts == 1
    run = deployment.only_run()
    assert run.state is RunState.RECEIVED and run.submit_attempts == 1
    assert "upload session" in (run.reason or "") and "lost (404)" in (run.reason or "")
    assert deployment.batches() == []
    deployment.finish(poller, run.run_id)
    assert_outputs(deployment, run.run_id, ["line-1", "line-2", "line-3"])
