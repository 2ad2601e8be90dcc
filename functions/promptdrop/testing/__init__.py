"""Tooling on top of promptdrop for local clouds, benchmarks, chaos runs and tests (like ``structlog.testing``).

Nothing in the deployed package imports this: it sits above every other layer and imports them. It needs the
``cloud`` extra and, for the Cloud emulators, Java and fake-gcs-server (``scripts/bootstrap dev``).

- ``cloud``: the Firestore and Pub/Sub emulators and fake-gcs-server on loopback ports (``LocalCloud``)
- ``emulator``: the bundled Gemini emulator in-process (``running_emulator``) and SDK helpers
- ``faultproxy``: a TCP proxy that resets, delays or passes connections (``FaultProxy``)
- ``eventarc``: CloudEvents shaped as Eventarc delivers them, from the captured samples in ``events/``
- ``bridge``: Pub/Sub messages delivered to a function as CloudEvents; the scheduler tick
- ``cloud_local``: the whole Cloud deployment on this machine (``scripts/cloud-local``)
- ``chaos``: the chaos suite behind ``scripts/chaos``
"""
