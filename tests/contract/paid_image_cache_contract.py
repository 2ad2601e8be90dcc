"""The ``PaidImageCache`` contract, as a mixin every adapter's test class inherits.

Subclass it in a ``Test...`` class and override the ``paid_images`` fixture with a fresh, empty cache, and
``separate_caches`` with independent clients on the same storage (for the races).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from promptdrop.ports import InFlight, PaidImage, PaidImageCache

FINGERPRINT = "ab" * 32


def make_entry(run_id: str = "cats-0123abcd", *, generation: str = "7") -> PaidImage:
    return PaidImage(
        fingerprint=FINGERPRINT,
        image=f"outputs/{run_id}/images/cat.png",
        generation=generation,
        size=1234,
        mime_type="image/png",
        model="gemini-3-pro-image",
        usage={"prompt_tokens": 5, "output_tokens": 1120, "image_tokens": 1120},
        run_id=run_id,
        key="cat",
        created_at=1_700_000_000.5,
    )


class PaidImageCacheContract:
    RACERS = 8  # runs settling the same line at once

    @pytest.fixture
    def paid_images(self) -> PaidImageCache:
        raise NotImplementedError

    @pytest.fixture
    def separate_caches(self) -> Callable[[int], list[PaidImageCache]]:
        raise NotImplementedError

    def test_a_missing_fingerprint_is_none(self, paid_images: PaidImageCache) -> None:
        """Nothing stored: get answers None."""
        assert paid_images.get(FINGERPRINT) is None

    def test_an_entry_round_trips(self, paid_images: PaidImageCache) -> None:
        """What put stores, get gives back field for field."""
        entry = make_entry()
        assert paid_images.put(entry)
        assert paid_images.get(FINGERPRINT) == entry

    def test_put_keeps_the_first_entry(self, paid_images: PaidImageCache) -> None:
        """A second create for the same fingerprint changes nothing: the first image paid for stays."""
        first, second = make_entry("run-a"), make_entry("run-b")
        assert paid_images.put(first)
        assert not paid_images.put(second)
        assert paid_images.get(FINGERPRINT) == first

    def test_replacing_swaps_only_the_entry_named(self, paid_images: PaidImageCache) -> None:
        """Replacing a stale entry works if it is still stored; a stale view of it changes nothing."""
        first, second, third = make_entry("run-a"), make_entry("run-b"), make_entry("run-c")
        paid_images.put(first)
        assert paid_images.put(second, replacing=first)
        assert paid_images.get(FINGERPRINT) == second
        assert not paid_images.put(third, replacing=first)  # someone replaced it meanwhile
        assert paid_images.get(FINGERPRINT) == second
        assert not paid_images.put(third, replacing=replace(second, generation="8"))
        assert paid_images.get(FINGERPRINT) == second

    def test_racing_creates_have_one_winner(
        self, separate_caches: Callable[[int], list[PaidImageCache]]
    ) -> None:
        """Runs settling the same new line at once: exactly one entry is created, and it is kept."""
        caches = separate_caches(self.RACERS)
        with ThreadPoolExecutor(len(caches)) as pool:
            won = list(pool.map(lambda i: caches[i].put(make_entry(f"run-{i}")), range(len(caches))))
        assert won.count(True) == 1
        stored = caches[0].get(FINGERPRINT)
        assert stored is not None and stored.run_id == f"run-{won.index(True)}"

    def test_racing_replacements_have_one_winner(
        self, separate_caches: Callable[[int], list[PaidImageCache]]
    ) -> None:
        """Runs replacing the same stale entry at once: one replaces it, the others change nothing."""
        caches = separate_caches(self.RACERS)
        stale = make_entry("old-run")
        caches[0].put(stale)
        with ThreadPoolExecutor(len(caches)) as pool:
            won = list(
                pool.map(lambda i: caches[i].put(make_entry(f"run-{i}"), replacing=stale), range(len(caches)))
            )
        assert won.count(True) == 1
        stored = caches[0].get(FINGERPRINT)
        assert stored is not None and stored.run_id == f"run-{won.index(True)}"

    def test_an_in_flight_claim_is_created_once_and_names_its_holder(
        self, paid_images: PaidImageCache
    ) -> None:
        """The first claim wins; a second run's claim changes nothing and is told who holds it."""
        first, second = InFlight(FINGERPRINT, "run-a", "cat"), InFlight(FINGERPRINT, "run-b", "kitten")
        assert paid_images.in_flight(FINGERPRINT) is None
        assert paid_images.claim_in_flight(first) == first
        assert paid_images.claim_in_flight(second) == first
        assert paid_images.in_flight(FINGERPRINT) == first

    def test_a_claim_is_taken_over_only_from_the_holder_named(self, paid_images: PaidImageCache) -> None:
        """Replacing the claim of a run that ended works while it is still stored, not over another."""
        ended, taker, late = (InFlight(FINGERPRINT, run, "cat") for run in ("run-a", "run-b", "run-c"))
        paid_images.claim_in_flight(ended)
        assert paid_images.claim_in_flight(taker, replacing=ended) == taker
        assert paid_images.claim_in_flight(late, replacing=ended) == taker
        assert paid_images.in_flight(FINGERPRINT) == taker

    def test_release_deletes_only_the_runs_own_claim(self, paid_images: PaidImageCache) -> None:
        """A run releases its claim; releasing a claim another run holds (or none) changes nothing."""
        mine, theirs = InFlight(FINGERPRINT, "run-a", "cat"), InFlight(FINGERPRINT, "run-b", "cat")
        paid_images.claim_in_flight(mine)
        paid_images.release_in_flight(theirs)
        assert paid_images.in_flight(FINGERPRINT) == mine
        paid_images.release_in_flight(mine)
        assert paid_images.in_flight(FINGERPRINT) is None
        paid_images.release_in_flight(mine)  # again: nothing to do
        assert paid_images.claim_in_flight(theirs) == theirs

    def test_racing_claims_have_one_payer(
        self, separate_caches: Callable[[int], list[PaidImageCache]]
    ) -> None:
        """Runs submitting the same line at once: exactly one becomes the payer, and all are told which."""
        caches = separate_caches(self.RACERS)
        claims = [InFlight(FINGERPRINT, f"run-{i}", "cat") for i in range(len(caches))]
        with ThreadPoolExecutor(len(caches)) as pool:
            holders = list(pool.map(lambda i: caches[i].claim_in_flight(claims[i]), range(len(caches))))
        assert len(set(holders)) == 1
        assert holders[0] in claims and caches[0].in_flight(FINGERPRINT) == holders[0]

    def test_get_many_reads_the_stored_entries_in_batches(self, paid_images: PaidImageCache) -> None:
        """get_many answers for more fingerprints than one batched read takes (Firestore get_all 300 a
        call, SQLite 500 per IN query): every stored one, field for field; absent ones left out."""
        stored = [replace(make_entry(f"run-{n}"), fingerprint=f"{n:064x}") for n in range(0, 1300, 2)]
        for entry in stored:
            assert paid_images.put(entry)
        wanted = [f"{n:064x}" for n in range(1300)] + [stored[0].fingerprint]  # a repeat is fine
        assert paid_images.get_many(wanted) == {entry.fingerprint: entry for entry in stored}
        assert paid_images.get_many([]) == {}
        assert paid_images.get_many([f"{1:064x}"]) == {}

    def test_in_flight_many_reads_the_stored_claims_in_batches(self, paid_images: PaidImageCache) -> None:
        """in_flight_many names the holder of each claimed request, over several batched reads; released
        and never-claimed requests are left out."""
        claims = [InFlight(f"{n:064x}", f"run-{n % 3}", f"line-{n}") for n in range(0, 700, 2)]
        for marker in claims:
            assert paid_images.claim_in_flight(marker) == marker
        paid_images.release_in_flight(claims[0])
        wanted = [f"{n:064x}" for n in range(700)]
        assert paid_images.in_flight_many(wanted) == {m.fingerprint: m for m in claims[1:]}
        assert paid_images.in_flight_many([]) == {}

    def test_put_many_creates_the_absent_entries_and_keeps_the_stored_ones(
        self, paid_images: PaidImageCache
    ) -> None:
        """put_many over more entries than one batched write takes (Firestore 500 a commit): each absent
        one created (True), each one stored before left as it was (False), a repeated fingerprint created
        once (the first); a second call, as a settle run again after a kill, changes nothing."""
        older = [replace(make_entry("run-old"), fingerprint=f"{n:064x}") for n in range(0, 1200, 7)]
        for entry in older:
            assert paid_images.put(entry)
        mine = [replace(make_entry("run-new"), fingerprint=f"{n:064x}") for n in range(1200)]
        repeat = replace(mine[3], key="dog")
        created = paid_images.put_many([*mine, repeat])
        assert created == [n % 7 != 0 for n in range(1200)] + [False]
        expected = {entry.fingerprint: entry for entry in mine} | {e.fingerprint: e for e in older}
        assert paid_images.get_many(expected) == expected
        assert paid_images.put_many(mine) == [False] * len(mine)
        assert paid_images.get_many(expected) == expected
        assert paid_images.put_many([]) == []

    def test_release_in_flight_many_deletes_only_the_runs_own_claims(
        self, paid_images: PaidImageCache
    ) -> None:
        """release_in_flight_many over more claims than one batched read takes: the run's own claims go;
        one taken over by another run, one of another key, and one never claimed change nothing; releasing
        again (a settle run again after a kill) is harmless."""
        claims = [InFlight(f"{n:064x}", "run-a", f"line-{n}") for n in range(700)]
        for marker in claims:
            assert paid_images.claim_in_flight(marker) == marker
        taken = InFlight(claims[5].fingerprint, "run-b", "line-5")
        assert paid_images.claim_in_flight(taken, replacing=claims[5]) == taken
        other_key = InFlight(f"{900:064x}", "run-a", "line-x")
        assert paid_images.claim_in_flight(other_key) == other_key
        never = InFlight(f"{901:064x}", "run-a", "line-901")
        releasing = [*claims, replace(other_key, key="line-y"), never]
        paid_images.release_in_flight_many(releasing)
        wanted = [marker.fingerprint for marker in releasing]
        assert paid_images.in_flight_many(wanted) == {
            taken.fingerprint: taken,
            other_key.fingerprint: other_key,
        }
        paid_images.release_in_flight_many(releasing)
        assert paid_images.in_flight_many(wanted) == {
            taken.fingerprint: taken,
            other_key.fingerprint: other_key,
        }
        paid_images.release_in_flight_many([])

    def test_claim_in_flight_many_claims_the_free_requests_and_names_the_other_holders(
        self, paid_images: PaidImageCache
    ) -> None:
        """claim_in_flight_many over more requests than one batched write takes: each free one claimed for
        this run, each held by another run answered with that holder, a repeated fingerprint held by its
        first marker; claiming again (a submission run again) answers the same."""
        theirs = [InFlight(f"{n:064x}", "run-b", f"line-{n}") for n in range(0, 1200, 7)]
        for marker in theirs:
            assert paid_images.claim_in_flight(marker) == marker
        mine = [InFlight(f"{n:064x}", "run-a", f"line-{n}") for n in range(1200)]
        repeat = replace(mine[3], key="line-again")
        expected = [theirs[n // 7] if n % 7 == 0 else mine[n] for n in range(1200)] + [mine[3]]
        assert paid_images.claim_in_flight_many([*mine, repeat]) == expected
        assert paid_images.claim_in_flight_many(mine) == expected[:-1]
        assert paid_images.in_flight_many(m.fingerprint for m in mine) == {h.fingerprint: h for h in expected}
        assert paid_images.claim_in_flight_many([]) == []
