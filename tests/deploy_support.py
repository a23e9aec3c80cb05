"""Helpers for the deploy tests: test PKI with openssl, the shipped Mosquitto config on a
free port, paho clients that report what the broker answered, systemd-analyze runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.brokers import MOSQUITTO, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
MOSQ_DIR = DEPLOY / "mosquitto"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

# --- test PKI -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1 (EC keys: fast)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", f"/CN=fleetpulse {name} CA", cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return Pki(ca=ca, server_cert=crt, server_key=key)


# --- the shipped Mosquitto config, made runnable in a temp dir -------------------------


def rewrite_directives(text: str, replace: dict[str, str]) -> str:
    """Replace the value of each named directive; each must occur exactly once.

    Only paths and the port change, so everything else is tested as shipped; a directive
    that moved or vanished fails loudly instead of leaving a stale path in the test.
    """
    seen = dict.fromkeys(replace, 0)
    out = []
    for line in text.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
        if key in replace:
            seen[key] += 1
            line = f"{key} {replace[key]}"
        out.append(line)
    wrong = {k: n for k, n in seen.items() if n != 1}
    if wrong:
        raise AssertionError(f"expected each directive once in the shipped config: {wrong}")
    return "\n".join(out) + "\n"


def rewrite_keys(toml_text: str, replace: dict[str, str]) -> str:
    """Swap the value of each ``key = value`` line of a TOML example; each key once.

    Values are given as TOML (quoted strings stay quoted). Like ``rewrite_directives``, a
    key that vanished or repeats fails loudly.
    """
    seen = dict.fromkeys(replace, 0)
    out = []
    for line in toml_text.splitlines():
        key, sep, _ = line.partition(" = ")
        if sep and key in replace:
            seen[key] += 1
            line = f"{key} = {replace[key]}"
        out.append(line)
    wrong = {k: n for k, n in seen.items() if n != 1}
    if wrong:
        raise AssertionError(f"expected each key once in the example config: {wrong}")
    return "\n".join(out) + "\n"


@dataclass
class GatewayBroker:
    """Mosquitto with deploy/mosquitto/fleetpulse.conf under a Debian-like main config."""

    workdir: Path
    pki: Pki
    users: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write(self) -> Path:
        etc = self.workdir / "etc"
        (etc / "conf.d").mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        passwd = etc / "fleetpulse.passwd"
        passwd.touch()
        for user, password in self.users.items():
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        acl = etc / "fleetpulse.acl"
        shutil.copyfile(MOSQ_DIR / "fleetpulse.acl", acl)
        dropin = rewrite_directives(
            (MOSQ_DIR / "fleetpulse.conf").read_text(),
            {
                "listener": f"{self.port} 127.0.0.1",
                "password_file": str(passwd),
                "acl_file": str(acl),
                "cafile": str(self.pki.ca),
                "certfile": str(self.pki.server_cert),
                "keyfile": str(self.pki.server_key),
            },
        )
        (etc / "conf.d" / "fleetpulse.conf").write_text(dropin)
        # What Debian's /etc/mosquitto/mosquitto.conf holds, with temp paths.
        main = etc / "mosquitto.conf"
        # as root, Mosquitto would switch to the mosquitto user, who cannot read tmp_path
        as_root = "user root\n" if os.geteuid() == 0 else ""
        main.write_text(
            f"pid_file {self.workdir / 'mosquitto.pid'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir / 'data'}/\n"
            f"log_dest file {self.log}\n"
            f"include_dir {etc / 'conf.d'}\n" + as_root
        )
        return main

    def start(self) -> GatewayBroker:
        main = self.write()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            log = self.log.read_text() if self.log.exists() else ""
            raise AssertionError(f"mosquitto did not start: {err.decode()} {log}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate(timeout=10)
            self.proc = None


# --- paho clients that record what the broker said ---------------------------------------


@dataclass
class Outcome:
    """What one client saw: the CONNACK, SUBACK and PUBACK reason codes, and messages."""

    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    subacks: list[list[ReasonCode]] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: (topic, payload) in self.messages, timeout)


def mqtt_client(
    port: int,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca: Path | None = None,
    will_topic: str | None = None,
    session_expiry: int | None = None,
) -> tuple[mqtt.Client, Outcome]:
    """An MQTT 5 client (loop running) connecting to 127.0.0.1:port; TLS when ``ca`` is set.

    ``session_expiry`` asks for a persistent session (clean start off), as the agent does.
    Raises what paho raises when the TLS handshake fails (ssl.SSLError).
    """
    out = Outcome()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        reconnect_on_failure=False,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    if will_topic is not None:
        client.will_set(will_topic, b'{"state":"offline"}', qos=1, retain=True)

    def on_connect(c, userdata, flags, reason_code, properties):
        out.connack = reason_code
        out.connected.set()

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        out.subacks.append(list(reason_codes))
        out.subscribed.set()

    def on_publish(c, userdata, mid, reason_code, properties):
        out.pubacks[mid] = reason_code

    def on_message(c, userdata, msg):
        with out.arrived:
            out.messages.append((msg.topic, msg.payload))
            out.arrived.notify_all()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    props = None
    if session_expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
    client.connect(
        "localhost" if ca is not None else "127.0.0.1",
        port,
        keepalive=30,
        clean_start=session_expiry is None,
        properties=props,
    )
    client.loop_start()
    return client, out


@contextlib.contextmanager
def connected(port: int, client_id: str, **kw: object) -> Iterator[tuple[mqtt.Client, Outcome]]:
    client, out = mqtt_client(port, client_id, **kw)  # type: ignore[arg-type]
    try:
        yield client, out
    finally:
        client.disconnect()
        client.loop_stop()


def disconnect_with_will(client: mqtt.Client) -> None:
    """MQTT 5 DISCONNECT 0x04: the broker publishes the will, as when a device dies."""
    client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    client.loop_stop()


# --- systemd-analyze ---------------------------------------------------------------------


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"},
    )


_EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d)")


def exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure ``systemd-analyze security --offline=yes`` gives a unit file."""
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = _EXPOSURE_RE.search(proc.stdout)
    if match is None:
        raise AssertionError(f"no exposure line: rc={proc.returncode} {proc.stdout}{proc.stderr}")
    return float(match.group(2)), proc.stdout


def exec_paths(unit_text: str) -> list[str]:
    """The absolute binaries of the Exec*= lines (prefixes such as '-' or '@' removed)."""
    paths = []
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("Exec") and value.strip():
            paths.append(value.strip().lstrip("-@:+!").split()[0])
    return paths


def verify_root(root: Path, units: list[Path], stub_binaries: bool = True) -> Path:
    """A temp root with the units under /etc/systemd/system and (optionally) stub binaries.

    ``systemd-analyze verify`` checks that ExecStart= exists and is executable; the real
    venv lives on the gateway, so a stub stands in for it inside ``--root``.
    """
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in units:
        shutil.copyfile(unit, unit_dir / unit.name)
        if not stub_binaries:
            continue
        for binary in exec_paths(unit.read_text()):
            stub = root / binary.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return unit_dir
