"""Every settings error names the variable, the value given and the form expected; never a secret's value."""

from __future__ import annotations

import pytest

from promptdrop.errors import ConfigurationError
from promptdrop.settings import ENV_PREFIX, Settings

# Fields any string is good for (names, paths, topics), and those not read from a PROMPTDROP_ variable.
FREE_TEXT = {"home", "bucket", "model", "events_topic", "now_topic", "webhook_secret", "vertex_project"}
NOT_READ = {"api_key", "in_cloud"}
CHECKED = sorted(set(Settings.model_fields) - FREE_TEXT - NOT_READ)


@pytest.mark.parametrize("field", CHECKED)
def test_every_checked_variable_says_what_it_expects(field: str) -> None:
    variable = ENV_PREFIX + field.upper()
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: "nonsense-1"})
    message = str(caught.value)
    assert message.startswith(f"{variable}='nonsense-1': expected "), message
    assert len(message) > len(f"{variable}='nonsense-1': expected ") + 5


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PROMPTDROP_MAX_COST_USD", "-0.01", "a non-negative amount in USD such as 25 or 12.50"),
        ("PROMPTDROP_MAX_ATTEMPTS", "0", "a whole number of 1 or more, such as 3"),
        ("PROMPTDROP_UPLOAD_CONCURRENCY", "-2", "a whole number of 0 or more, such as 16"),
        ("PROMPTDROP_CACHE_DAYS", "0", "a number above 0, such as 30"),
        ("PROMPTDROP_MAX_JOB_BYTES", "2000000001", "a whole number of bytes from 0 to 2000000000"),
        ("PROMPTDROP_INBOX_PREFIX", "/inbox/", "a folder prefix that ends with '/'"),
        ("PROMPTDROP_STORE", "postgres://db", "sqlite:///PATH, firestore or firestore://PROJECT/DATABASE"),
        ("PROMPTDROP_NOW_BASE_URL", "localhost:8080", "an http:// or https:// URL"),
    ],
)
def test_values_of_the_right_type_but_the_wrong_range_or_form(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r}: expected {expected}")


def test_zero_money_and_good_values_are_fine() -> None:
    settings = Settings.from_env({"PROMPTDROP_MAX_COST_USD": "0", "PROMPTDROP_JOB_DEADLINE": "2d"})
    assert (settings.max_cost_usd, settings.job_deadline) == (0.0, 172800.0)


def test_several_bad_values_are_all_named_and_a_secret_is_never_shown() -> None:
    secret = "whsec_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3Qtc2hvdw=="
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {"PROMPTDROP_CACHE": "maybe", "PROMPTDROP_BACKEND": "gemni", "PROMPTDROP_WEBHOOK_SECRET": secret},
            webhook_secret=12,
        )
    message = str(caught.value)
    assert "PROMPTDROP_CACHE='maybe'" in message and "PROMPTDROP_BACKEND='gemni'" in message
    assert "PROMPTDROP_WEBHOOK_SECRET=(hidden)" in message
    assert secret not in message
