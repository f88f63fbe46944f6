"""`broker.logs`: fields passed with ``extra=`` reach both formats, as key=value or JSON keys."""

from __future__ import annotations

import json
import logging
import re

from broker.logs import JsonFormatter, TextFormatter


def record(msg: str, *args: object, **fields: object) -> logging.LogRecord:
    """A record as `logger.info(msg, *args, extra=fields)` makes it."""
    logger = logging.getLogger("broker.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=fields)


STATS = {"connections": 0, "messages_in": 3, "bytes_in": 1024}


def test_text_writes_fields_as_key_value_after_the_message() -> None:
    line = TextFormatter().format(record("broker %s stopped", "ab12", stats=STATS))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO broker\.test: "
        r"broker ab12 stopped \| connections=0 messages_in=3 bytes_in=1024",
        line,
    ), line


def test_text_without_fields_is_the_message_alone() -> None:
    line = TextFormatter().format(record("listening on %s", "127.0.0.1:5878"))
    assert line.endswith(" INFO broker.test: listening on 127.0.0.1:5878")


def test_text_quotes_only_values_that_need_it() -> None:
    line = TextFormatter().format(
        record(
            "m",
            client="svc-1",
            reason="slow consumer",
            quote='say "hi"',
            empty="",
            ok=True,
            none=None,
            ratio=0.5,
            hosts=("127.0.0.1", "::1"),
        )
    )
    assert line.endswith(
        ' m | client=svc-1 reason="slow consumer" quote="say \\"hi\\"" empty="" ok=true none=null'
        ' ratio=0.5 hosts=["127.0.0.1","::1"]'
    ), line


def test_text_keeps_the_fields_on_the_message_line_above_a_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        failed = record("failed", client=7)
        failed.exc_info = (type(error), error, error.__traceback__)
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith(" failed | client=7")
    assert rest[-1] == "RuntimeError: boom"


def test_json_makes_a_mapping_field_an_object() -> None:
    entry = json.loads(JsonFormatter().format(record("broker %s stopped", "ab12", stats=STATS)))
    assert entry["message"] == "broker ab12 stopped"
    assert entry["stats"] == STATS
