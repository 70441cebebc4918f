"""wgpy.errors: the exception hierarchy and the flat DropReason enum the style guide (§3) names."""

from __future__ import annotations

import errno

import pytest

from wgpy.errors import ConfigError, DropReason, MalformedMessage, UapiError, WgpyError

# STYLE.md §3 lists these reasons; wgpy adds HANDSHAKE_FAILED, INVALID_COOKIE_REPLY, QUEUE_FULL and FILTERED.
STYLE_GUIDE_REASONS = (
    "BAD_LENGTH BAD_TYPE INVALID_MAC COOKIE_SENT RATE_LIMITED UNKNOWN_INDEX UNKNOWN_PEER STALE_TIMESTAMP "
    "HANDSHAKE_FLOOD KEYPAIR_EXPIRED REPLAYED_COUNTER COUNTER_OUT_OF_WINDOW INVALID_AEAD_TAG INVALID_IP_PACKET "
    "DISALLOWED_SOURCE_IP NO_ROUTE NO_PRIVATE_KEY"
).split()


def test_every_reason_of_the_style_guide_exists() -> None:
    names = {reason.name for reason in DropReason}
    assert set(STYLE_GUIDE_REASONS) <= names
    assert {"HANDSHAKE_FAILED", "INVALID_COOKIE_REPLY", "QUEUE_FULL", "FILTERED"} <= names
    assert "NO_ENDPOINT" not in names  # removed as dead code (issue #18)


def test_reasons_are_distinct() -> None:
    assert len({reason.value for reason in DropReason}) == len(DropReason)


@pytest.mark.parametrize("cls", [ConfigError, MalformedMessage])
def test_local_misuse_and_codec_errors_are_value_errors(cls: type[Exception]) -> None:
    # Callers that catch ValueError (the idiom for bad arguments) also catch these, and so does WgpyError.
    with pytest.raises(ValueError, match="bad"):
        raise cls("bad")
    assert issubclass(cls, WgpyError)


def test_uapi_error_keeps_a_positive_errno_and_its_message() -> None:
    error = UapiError(errno.EINVAL, "listen_port must be below 65536")
    assert error.errno == errno.EINVAL > 0  # the UAPI reply line writes it negated: errno=-22
    assert str(error) == "listen_port must be below 65536"
    assert isinstance(error, WgpyError)
    assert not isinstance(error, ValueError)
