"""Use cases: claim and submit a run, poll its jobs, harvest results, settle the run."""
