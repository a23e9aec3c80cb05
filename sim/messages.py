"""The MQTT messages a device timeline produces (DESIGN §3 and §8), in simulated-time order.

Truth and messages come from the same segments, timed so that the KPI of DESIGN §4 can
recover the truth: a device up over [a, b) says ``online`` (and ``boot`` after a reboot) at
a, sends telemetry every heartbeat while t < b, a ``crash`` event half a second before it
dies and its LWT ``offline`` exactly at b. Nothing is sent while down.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

from schemas.topics import topic_for

from .fleet import DeviceSpec, Segment
from .scenario import Scenario, Site

# LAST_WILL: a will after which the device stays silent to the end (its final status)
PUBLISH, WILL, DROP, LAST_WILL = 0, 1, 2, 3
# The crash event goes out this long before the crash, so an LWT at the crash instant is
# the device's last word (an event at the same ms could sort after it and restart up-time).
CRASH_EVENT_LEAD_MS = 500

MALFORMED_KINDS = (
    "not_json",
    "not_utf8",
    "not_object",
    "missing_seq",
    "ts_without_offset",
    "device_mismatch",
    "unknown_kind",
    "nan_metric",
)


class Msg(NamedTuple):
    """One thing to do at simulated time ``ms``: publish, publish as a will, or drop (lossy).

    ``label`` says what it is for the counts: ``telemetry``, ``event.boot``, ``status.lwt``,
    ``duplicate.telemetry``, ``malformed.not_json``, ``dropped.telemetry``, ...
    """

    ms: int
    device: int
    n: int
    action: int
    topic: str
    payload: bytes
    retain: bool
    label: str


def kind_of(label: str) -> str | None:
    """The topic kind a label is counted under, ``malformed``, or None when not published."""
    head, _, rest = label.partition(".")
    if head == "dropped":
        return None
    if head == "duplicate":
        return rest.partition(".")[0]
    return head


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


class _Device:
    """Message builder for one device: its clock, counter, RNG and where it is."""

    def __init__(self, spec: DeviceSpec, scenario: Scenario, sites: dict[str, Site]) -> None:
        self.spec = spec
        self.sc = scenario
        self.sites = sites
        self.rng = random.Random(f"{scenario.seed}:{spec.device_id}:messages")
        self.n = 0
        self.seq = 0
        self.tz: timezone = sites[spec.site].tzinfo
        home = sites[spec.site]
        self.dlat, self.dlon = spec.lat - home.lat, spec.lon - home.lon
        self.boot_ms = 0
        self.home = (spec.site, spec.lat, spec.lon)
        self._middle: dict[tuple[str, str], str] = {}

    def ts(self, ms: int) -> int | str:
        """The device's own time stamp: skewed, as epoch ms or RFC 3339 with the site offset."""
        dev = ms + self.spec.skew_ms
        if not self.spec.rfc3339:
            return dev
        moment = datetime.fromtimestamp(dev // 1000, tz=UTC) + timedelta(milliseconds=dev % 1000)
        return moment.astimezone(self.tz).isoformat(timespec="milliseconds")

    def where(self, ms: int) -> tuple[str, float, float]:
        roam = self.spec.roam
        if roam is None:
            return self.home
        if roam.start_s * 1000 <= ms < roam.end_s * 1000:
            s = self.sites[roam.site]
            return s.name, round(s.lat + self.dlat, 6), round(s.lon + self.dlon, 6)
        return self.home

    def msg(self, ms: int, action: int, kind: str, body: dict[str, object], label: str) -> Msg:
        self.n += 1
        topic = topic_for(self.where(ms)[0], self.spec.device_id, kind)
        return Msg(
            ms, self.spec.index, self.n, action, topic, _dumps(body), kind == "status", label
        )

    def status(self, ms: int, state: str, reason: str, label: str, action: int = PUBLISH) -> Msg:
        body: dict[str, object] = {"device_id": self.spec.device_id, "ts": self.ts(ms)}
        body |= {"state": state, "reason": reason}
        return self.msg(ms, action, "status", body, label)

    def event(self, ms: int, etype: str, detail: dict[str, object]) -> Iterator[Msg]:
        body: dict[str, object] = {"device_id": self.spec.device_id, "ts": self.ts(ms)}
        body |= {"seq": self.seq, "type": etype, "detail": detail}
        self.seq += 1
        m = self.msg(ms, PUBLISH, "event", body, f"event.{etype}")
        yield m
        yield from self.maybe_duplicate(m)

    def telemetry(self, ms: int, fw: str) -> Iterator[Msg]:
        site, lat, lon = self.where(ms)
        spec, rng = self.spec, self.rng
        seq = self.seq
        self.seq += 1
        if spec.loss_rate and rng.random() < spec.loss_rate:
            # lost on the radio link: sent (the counter moved on) but never reaches the broker
            self.n += 1
            yield Msg(ms, spec.index, self.n, DROP, "", b"", False, "dropped.telemetry")
        else:
            hour = (ms / 3_600_000) % 24
            temp = 18 + 6 * math.sin((hour - 9) * math.pi / 12) + rng.random() - 0.5
            rssi = (-84 if spec.loss_rate else -62) + 8 * (rng.random() - 0.5)
            cpu = 10 + 20 * rng.random()
            ts = self.ts(ms)
            ts_json = ts if isinstance(ts, int) else f'"{ts}"'
            middle = self._middle.get((fw, site))
            if middle is None:
                middle = self._middle[(fw, site)] = (
                    f',"fw":{json.dumps(fw)},"lat":{lat},"lon":{lon},"metrics":{{"temp_c":'
                )
            # telemetry is nearly every message: formatted directly, ~3x faster than json.dumps;
            # every part is a number, a JSON-quoted string or an identifier (IDENT_RE, no quotes)
            payload = (
                f'{{"device_id":"{spec.device_id}","ts":{ts_json},"seq":{seq}{middle}'
                f'{temp:.2f},"rssi_dbm":{rssi:.1f},"cpu_pct":{cpu:.1f},'
                f'"uptime_s":{(ms - self.boot_ms) // 1000}}}}}'
            ).encode()
            self.n += 1
            topic = topic_for(site, spec.device_id, "telemetry")
            m = Msg(ms, spec.index, self.n, PUBLISH, topic, payload, False, "telemetry")
            yield m
            yield from self.maybe_duplicate(m)
        if rng.random() < self.sc.messages.malformed_rate:
            yield self.malformed(ms, site)

    def maybe_duplicate(self, m: Msg) -> Iterator[Msg]:
        if self.rng.random() < self.sc.messages.duplicate_rate:
            # a QoS 1 redelivery: same topic, same bytes
            self.n += 1
            yield m._replace(n=self.n, label=f"duplicate.{m.label}")

    def malformed(self, ms: int, site: str) -> Msg:
        """A broken message of a random kind; every kind fails ``schemas.decode``."""
        kind = self.rng.choice(MALFORMED_KINDS)
        dev = self.spec.device_id
        topic = topic_for(site, dev, "telemetry")
        good = {"device_id": dev, "ts": ms, "seq": self.seq}
        payload: bytes
        if kind == "not_json":
            payload = _dumps(good)[:-7]
        elif kind == "not_utf8":
            payload = b'{"device_id":"' + dev.encode() + b'","note":"\xff\xfe"}'
        elif kind == "not_object":
            payload = _dumps([dev, ms, self.seq])
        elif kind == "missing_seq":
            payload = _dumps({"device_id": dev, "ts": ms})
        elif kind == "ts_without_offset":
            naive = datetime.fromtimestamp(ms // 1000, tz=UTC).replace(tzinfo=None)
            payload = _dumps(good | {"ts": naive.isoformat()})
        elif kind == "device_mismatch":
            payload = _dumps(good | {"device_id": f"{dev}x"})
        elif kind == "unknown_kind":
            topic = f"fleet/{site}/{dev}/debug"
            payload = _dumps(good)
        else:  # nan_metric
            payload = _dumps(good | {"metrics": {"temp_c": float("nan")}})
        self.n += 1
        return Msg(ms, self.spec.index, self.n, PUBLISH, topic, payload, False, f"malformed.{kind}")


def device_messages(
    spec: DeviceSpec, segments: list[Segment], scenario: Scenario, sites: dict[str, Site]
) -> Iterator[Msg]:
    """Every message of one device, in time order."""
    if not segments:
        return
    dev = _Device(spec, scenario, sites)
    firmware = {f.version: f for f in scenario.firmware}
    lwt_share = scenario.messages.lwt_on_crash
    h_ms = spec.heartbeat_s * 1000
    first = segments[0].start_s
    for i, seg in enumerate(segments):
        if not seg.up:
            continue
        a, b = seg.start_s * 1000, seg.end_s * 1000
        dev.boot_ms, dev.seq = a, 0
        prev = segments[i - 1] if i > 0 else None
        if seg.start_s == first and seg.start_s == scenario.start_s:
            # running before the scenario began: it just (re)connects
            yield dev.status(a, "online", "connected", "status.online")
            t = a + dev.rng.randint(1, spec.heartbeat_s) * 1000
        else:
            why = (
                "power_on"
                if prev is None
                else {"update": "fw_update", "loop": "watchdog"}.get(prev.cause or "", "crash")
            )
            yield dev.status(a, "online", "boot", "status.online")
            yield from dev.event(a, "boot", {"reason": why, "fw": seg.firmware})
            t = a + h_ms
        while t < b:
            yield from dev.telemetry(t, seg.firmware)
            t += h_ms
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        if nxt is None:
            if spec.decommissioned_s is not None and seg.end_s == spec.decommissioned_s:
                yield dev.status(b, "offline", "decommissioned", "status.offline")
            continue
        if nxt.cause == "update":
            yield from dev.event(
                b - CRASH_EVENT_LEAD_MS, "fw_update", {"from": seg.firmware, "to": nxt.firmware}
            )
            yield dev.status(b, "offline", "fw_update", "status.offline")
            continue
        if dev.rng.random() < firmware[seg.firmware].crash_event:
            fault = "watchdog" if nxt.cause == "loop" else dev.rng.choice(("panic", "oom", "hang"))
            yield from dev.event(
                b - CRASH_EVENT_LEAD_MS, "crash", {"fault": fault, "fw": seg.firmware}
            )
        if dev.rng.random() < lwt_share:
            last = i + 2 == len(segments)
            yield dev.status(b, "offline", "lwt", "status.lwt", LAST_WILL if last else WILL)


def fleet_messages(
    specs: list[DeviceSpec], timelines: list[list[Segment]], scenario: Scenario
) -> Iterator[Msg]:
    """All devices' messages merged into one stream in simulated-time order."""
    sites = {s.name: s for s in scenario.sites}
    streams: Iterable[Iterator[Msg]] = (
        device_messages(spec, segs, scenario, sites)
        for spec, segs in zip(specs, timelines, strict=True)
    )
    return heapq.merge(*streams)


def estimated_messages(specs: list[DeviceSpec], scenario: Scenario) -> int:
    """About how many messages a run publishes (telemetry dominates): for progress and sizing."""
    total = 0.0
    for d in specs:
        lo, hi = d.eligible(scenario.start_s, scenario.end_s)
        total += (hi - lo) / d.heartbeat_s
    return int(total)


__all__ = [
    "DROP",
    "LAST_WILL",
    "MALFORMED_KINDS",
    "PUBLISH",
    "WILL",
    "Msg",
    "device_messages",
    "estimated_messages",
    "fleet_messages",
    "kind_of",
]
