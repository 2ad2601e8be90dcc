"""Use cases: receive (claim) a run, advance it through its lifecycle (submit, launch, poll, harvest, retry, settle)."""
