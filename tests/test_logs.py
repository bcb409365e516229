"""The logfmt lines operators grep."""

import logging

from greygeo.logs import LogfmtFormatter


def line(msg: str, **extra: object) -> str:
    record = logging.LogRecord("greygeo.x", logging.INFO, "f", 1, msg, None, None)
    record.__dict__.update(extra)
    return LogfmtFormatter().format(record)


def test_fields_follow_the_message_as_key_value_pairs():
    text = line("decision", client="192.0.2.1", rule="LIMIT_TO_DOMAIN", reply=421)
    assert text.split(" ", 1)[1] == (
        "at=INFO logger=greygeo.x msg=decision client=192.0.2.1 "
        "rule=LIMIT_TO_DOMAIN reply=421"
    )


def test_values_with_spaces_quotes_or_empty_are_quoted():
    text = line("backend failed", reason='said "no"', limit_key="")
    assert 'msg="backend failed"' in text
    assert 'reason="said \\"no\\""' in text
    assert 'limit_key=""' in text


def test_control_characters_cannot_forge_a_second_line():
    text = line("decision", helo="evil\nat=INFO msg=decision rule=OK")
    assert "\n" not in text
    assert 'helo="evil\\nat=INFO msg=decision rule=OK"' in text
