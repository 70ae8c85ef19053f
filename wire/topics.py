"""MQTT topic layout shared by wearables and gateways: <prefix>/<gateway>/<kind>/<device>.

Kinds: `hs` handshake init (wearable to gateway), `hsr` handshake response, `rec` records,
`ack` delivery acknowledgements and `nos` unknown-session notices (gateway to wearable)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pqlink import ID_PATTERN


class TopicKind(enum.StrEnum):
    HANDSHAKE = "hs"
    RESPONSE = "hsr"
    RECORD = "rec"
    ACK = "ack"
    NOTICE = "nos"


INBOUND = frozenset({TopicKind.HANDSHAKE, TopicKind.RECORD})
"""The kinds a gateway subscribes to; the others are its own messages to wearables."""


@dataclass(frozen=True, slots=True)
class TopicLayout:
    prefix: str
    gateway_id: str

    def topic(self, kind: TopicKind, device_id: str) -> str:
        return f"{self.prefix}/{self.gateway_id}/{kind.value}/{device_id}"

    def subscription(self, kind: TopicKind) -> str:
        return f"{self.prefix}/{self.gateway_id}/{kind.value}/+"

    def parse(self, topic: str) -> tuple[TopicKind, str] | None:
        """(kind, device id) of a topic in this layout, or None for any other topic."""
        head = f"{self.prefix}/{self.gateway_id}/"
        if not topic.startswith(head):
            return None
        kind, _, device = topic[len(head) :].partition("/")
        try:
            parsed = TopicKind(kind)
        except ValueError:
            return None
        if not ID_PATTERN.fullmatch(device.encode("ascii", errors="replace")):
            return None
        return parsed, device
