"""Object names inside a run's output folder: the one place that knows the bucket layout of a run."""

from __future__ import annotations

from dataclasses import dataclass

from promptdrop.names import check_key


@dataclass(frozen=True, slots=True)
class RunLayout:
    folder: str  # "outputs/<run_id>/"

    @classmethod
    def of(cls, output_prefix: str, run_id: str) -> RunLayout:
        return cls(f"{output_prefix}{run_id}/")

    @property
    def manifest(self) -> str:
        return self.folder + "manifest.jsonl"

    @property
    def errors(self) -> str:
        return self.folder + "errors.jsonl"

    @property
    def rejected(self) -> str:
        return self.folder + "rejected.jsonl"

    @property
    def summary(self) -> str:
        return self.folder + "summary.json"

    def image(self, key: str, extension: str) -> str:
        """Depends only on (run, key): a harvest run twice writes the same object once."""
        return f"{self.folder}images/{check_key(key)}.{extension}"

    @property
    def gallery(self) -> str:
        """The gallery's first page; thumbnails live under ``thumbs/``."""
        return self.folder + "index.html"

    # Scratch space, deleted when the run ends (and by the bucket's lifecycle rule in the cloud).
    @property
    def work(self) -> str:
        return self.folder + "_work/"

    def input(self, fmt: str) -> str:
        return f"{self.work}input.{fmt}"

    @property
    def submit_outcomes(self) -> str:
        """Lines refused at submission (a missing reference image, the budget cap)."""
        return self.work + "submit-outcomes.jsonl"

    @property
    def cached_outcomes(self) -> str:
        """Lines served from the pay-once cache, decided once at submission (their images copied first)."""
        return self.work + "cached-outcomes.jsonl"

    def cache_decided_part(self, block: int) -> str:
        """Lines of one block of the input served from the cache: a long decision goes on next tick."""
        return f"{self.work}cache-decided/part-{block:06d}.jsonl"

    def reference_uploads_part(self, block: int) -> str:
        """Reference images uploaded to the Files API at submission, kept so a resumed one reuses them."""
        return f"{self.work}reference-uploads/part-{block:06d}.jsonl"

    @property
    def waiting(self) -> str:
        """Lines that wait for another unfinished run paying for the same request (decided at submission)."""
        return self.work + "waiting.jsonl"

    def wait_round(self, part: int) -> str:
        """One round of waiting lines resolved (served from the payer's image, or sent by this run)."""
        return f"{self.work}waited/round-{part:06d}.jsonl"

    @property
    def fingerprints(self) -> str:
        """Request fingerprints of the submitted lines: what the cache records once they succeed."""
        return self.work + "fingerprints.jsonl"

    def attempt_plan(self, attempt: int) -> str:
        """A retry attempt's job records, written before any is created, so a cut-off creation completes."""
        return f"{self.work}attempts/attempt-{attempt:03d}.jsonl"

    def job_folder(self, job_id: str) -> str:
        return f"{self.work}jobs/{job_id}/"

    def job_requests(self, job_id: str) -> str:
        return self.job_folder(job_id) + "requests.jsonl"

    def job_keys(self, job_id: str) -> str:
        return self.job_folder(job_id) + "keys.jsonl"

    def job_results(self, job_id: str) -> str:
        return self.job_folder(job_id) + "results.jsonl"

    def job_results_part(self, job_id: str, part: int) -> str:
        """One piece of a copied results file; the pieces read in order are the file."""
        return f"{self.job_folder(job_id)}results-{part:06d}.jsonl"

    def job_predictions(self, job_id: str) -> str:
        """Where a Vertex AI job writes its output folder (``prediction-model-*/predictions*.jsonl``)."""
        return self.job_folder(job_id) + "predictions/"

    def job_outcomes(self, job_id: str, part: int) -> str:
        return f"{self.job_folder(job_id)}outcomes-{part:06d}.jsonl"

    def job_outcomes_prefix(self, job_id: str) -> str:
        return self.job_folder(job_id) + "outcomes-"
