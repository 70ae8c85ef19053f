"""The MQTT topic layout <prefix>/<gateway>/<kind>/<device>: the topics and subscriptions it
builds, and parsing, which returns (kind, device) for a topic of this layout and None for
anything else (another prefix or gateway, an unknown kind, a device id that is not a valid
identifier, including non-ASCII ones), never an exception."""

from __future__ import annotations

import pytest

from wire.topics import INBOUND, TopicKind, TopicLayout

LAYOUT = TopicLayout("iomt", "gw-01")


def test_topics_and_subscriptions_follow_the_layout() -> None:
    assert LAYOUT.topic(TopicKind.RECORD, "wearable-0001") == "iomt/gw-01/rec/wearable-0001"
    assert LAYOUT.topic(TopicKind.NOTICE, "w") == "iomt/gw-01/nos/w"
    assert LAYOUT.subscription(TopicKind.HANDSHAKE) == "iomt/gw-01/hs/+"
    assert frozenset({TopicKind.HANDSHAKE, TopicKind.RECORD}) == INBOUND


@pytest.mark.parametrize("kind", list(TopicKind))
def test_parse_inverts_topic(kind: TopicKind) -> None:
    assert LAYOUT.parse(LAYOUT.topic(kind, "wearable-0001")) == (kind, "wearable-0001")


@pytest.mark.parametrize(
    "topic",
    [
        "iomt/gw-01/rec/wearable-é",  # non-ASCII device id
        "iomt/gw-01/rec/\u2603",
        "iomt/gw-01/hs/dev\u00a0ice",
        "iomt/gw-01/rec/wearable 1",
        "iomt/gw-01/rec/",
        "iomt/gw-01/rec",
        "iomt/gw-01/rec/a/b",  # a device id holds no '/'
        "iomt/gw-01/zz/wearable-0001",
        "iomt/gw-02/rec/wearable-0001",
        "other/gw-01/rec/wearable-0001",
        "iomt/gw-01",
        "",
    ],
)
def test_parse_returns_none_for_foreign_or_malformed_topics(topic: str) -> None:
    assert LAYOUT.parse(topic) is None


def test_parse_device_id_limits() -> None:
    longest = "a" * 64
    assert LAYOUT.parse(f"iomt/gw-01/ack/{longest}") == (TopicKind.ACK, longest)
    assert LAYOUT.parse(f"iomt/gw-01/ack/{longest}a") is None
    assert LAYOUT.parse("iomt/gw-01/ack/-lead") is None
    assert LAYOUT.parse("iomt/gw-01/ack/0._:-x") == (TopicKind.ACK, "0._:-x")
