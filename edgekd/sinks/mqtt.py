"""`edgekd run --mqtt mqtt://HOST:PORT/PREFIX`: each frame's verdict as a compact JSON message on PREFIX/verdict,
QoS 1 by default (the broker acknowledges each one), sent in order through the spool (edgekd/sinks/delivery.py), and
PREFIX/status retained: "online" while the run lasts, "offline" when it ends or (the broker's last will) when the
connection dies. TLS with mqtts:// (--mqtt-ca, and a client certificate with --mqtt-cert/--mqtt-key); a user name
and password from --mqtt-auth-file (first line USER:PASSWORD).

At start the broker is asked once: a refusal (bad user name or password, not authorised) stops the run before the
model loads, since no message would ever get through; a broker that is merely away is a warning, and messages
wait in the spool until it answers (a line should keep inspecting while its broker restarts)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgekd.errors import EdgekdError
from edgekd.secret_files import read_credentials
from edgekd.sinks.line_message import is_part
from edgekd.sinks.spool import Spool
from edgekd.sinks.spooled import EVERY, SpooledSink

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CONNECT_WAIT_S = 3.0  # how long the start waits for the broker's answer
PUBLISH_WAIT_S = 5.0  # how long one message waits for the broker's acknowledgement before it is retried


@dataclass(frozen=True)
class MqttTarget:
    url: str
    host: str
    port: int
    prefix: str
    tls: bool
    qos: int = 1
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None

    @property
    def verdict_topic(self) -> str:
        return f"{self.prefix}/verdict"

    @property
    def part_topic(self) -> str:
        return f"{self.prefix}/part"

    @property
    def trigger_topic(self) -> str:
        return f"{self.prefix}/trigger"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"


def _readable(path: Path | None, option: str) -> Path | None:
    if path is not None and not os.access(path, os.R_OK):
        raise EdgekdError(f"{option} {path} cannot be read: give an existing PEM file")
    return path


def parse_target(url: str, qos: int = 1, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                 auth_file: Path | None = None) -> MqttTarget:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise EdgekdError(f"--mqtt {url!r} is not a broker address: give mqtt://HOST:PORT/TOPIC-PREFIX (or mqtts:// "
                          "for TLS), e.g. mqtt://127.0.0.1:1883/line1")
    if parts.username or parts.password:
        raise EdgekdError("--mqtt: put the user name and password in a file given with --mqtt-auth-file, not in the "
                          "URL")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise EdgekdError(f"--mqtt {url!r}: the port must be a number from 1 to 65535") from None
    prefix = parts.path.strip("/")
    if not prefix or any(c in prefix for c in "#+"):
        raise EdgekdError(f"--mqtt {url!r}: give a topic prefix without wildcards after the address, e.g. /line1")
    if qos not in (0, 1, 2):
        raise EdgekdError(f"--mqtt-qos {qos} must be 0, 1 or 2")
    tls = parts.scheme == "mqtts"
    if not tls and (ca or cert or key):
        raise EdgekdError("--mqtt-ca, --mqtt-cert and --mqtt-key are for TLS: use an mqtts:// address")
    if (cert is None) != (key is None):
        raise EdgekdError("--mqtt-cert and --mqtt-key go together (the client certificate and its private key)")
    user, password = read_credentials(auth_file, "--mqtt-auth-file") if auth_file else (None, None)
    return MqttTarget(url, parts.hostname, port, prefix, tls, qos, _readable(ca, "--mqtt-ca"),
                      _readable(cert, "--mqtt-cert"), _readable(key, "--mqtt-key"), user, password)


class MqttLink:
    """The client: connected in the background (paho's own thread reconnects), the status topic kept current."""

    def __init__(self, target: MqttTarget, client_id: str, log=lambda text: None):
        import paho.mqtt.client as mqtt
        self.target, self.log = target, log
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if target.tls:
            try:
                self.client.tls_set(ca_certs=str(target.ca) if target.ca else None,
                                    certfile=str(target.cert) if target.cert else None,
                                    keyfile=str(target.key) if target.key else None)
            except (OSError, ValueError) as exc:
                raise EdgekdError(f"--mqtt TLS files cannot be used ({exc}): check --mqtt-ca/--mqtt-cert/--mqtt-key") \
                    from None
        if target.username is not None:
            self.client.username_pw_set(target.username, target.password)
        self.client.will_set(target.status_topic, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 5)
        self.answered = threading.Event()
        self.refusal: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.on_trigger = None  # (part id or None) -> None: the PLC started a part (--part-trigger mqtt)
        self.closed = False

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refusal = str(reason_code)
        else:
            self.refusal = None
            client.publish(self.target.status_topic, "online", qos=1, retain=True)
            if self.on_trigger is not None:  # again after every reconnect: a clean session forgets it
                client.subscribe(self.target.trigger_topic, qos=1)
        self.answered.set()

    def _on_message(self, client, userdata, message) -> None:
        if self.on_trigger is not None and message.topic == self.target.trigger_topic:
            text = message.payload.decode("utf-8", "replace").strip()
            self.on_trigger(text or None)

    def start(self) -> None:
        """Connect: a refusal or an untrusted certificate is an error; silence (nothing listening yet) a warning, and
        paho keeps trying in the background while the spool keeps the messages."""
        import ssl
        try:
            self.client.connect(self.target.host, self.target.port, keepalive=30)
        except ssl.SSLCertVerificationError as exc:
            raise EdgekdError(f"MQTT broker {self.target.url}: its certificate is not trusted ({exc.verify_message}): "
                              "give the CA that signed it with --mqtt-ca") from None
        except ssl.SSLError as exc:
            raise EdgekdError(f"MQTT broker {self.target.url}: the TLS handshake failed ({exc.reason}): check that "
                              "it speaks TLS on that port, and --mqtt-cert/--mqtt-key") from None
        except (OSError, ValueError) as exc:
            self.log(f"warning: MQTT broker {self.target.url} does not answer yet ({exc}): verdicts wait in the spool "
                     "and are sent in order once it does")
            self.client.connect_async(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()
        if self.answered.wait(CONNECT_WAIT_S) and self.refusal is not None:
            refusal = self.refusal
            self.close()
            raise EdgekdError(f"MQTT broker {self.target.url} refused the connection ({refusal}): check the user name "
                              "and password in --mqtt-auth-file, and the broker's access rules")

    def send(self, payload: bytes) -> None:
        import paho.mqtt.client as mqtt
        if not self.client.is_connected():
            raise ConnectionError(f"not connected to {self.target.host}:{self.target.port}")
        topic = self.target.part_topic if is_part(json.loads(payload)) else self.target.verdict_topic
        info = self.client.publish(topic, payload, qos=self.target.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(mqtt.error_string(info.rc))
        if self.target.qos:
            info.wait_for_publish(PUBLISH_WAIT_S)
            if not info.is_published():
                raise TimeoutError(f"no acknowledgement within {PUBLISH_WAIT_S:g} s")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.client.is_connected():  # a clean end: the last will is not sent, so say it
            self.client.publish(self.target.status_topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
            self.client.disconnect()
        self.client.loop_stop()


@dataclass
class PreparedMqtt:
    link: MqttLink
    spool: Spool
    every: str

    def close(self) -> None:
        self.link.close()


def prepare(request) -> PreparedMqtt:
    if request.mqtt_every not in EVERY:
        raise EdgekdError(f"--mqtt-every {request.mqtt_every!r} must be one of {', '.join(EVERY)}")
    target = parse_target(request.mqtt, request.mqtt_qos, request.mqtt_ca, request.mqtt_cert, request.mqtt_key,
                          request.mqtt_auth_file)
    spool = Spool(Path(request.spool) / "mqtt.db", request.spool_limit)  # a folder it cannot write fails here
    link = MqttLink(target, f"edgekd-{os.uname().nodename}-{os.getpid()}", log=_stderr)
    try:
        link.start()
    except BaseException:
        spool.close()
        raise
    return PreparedMqtt(link, spool, request.mqtt_every)


def _stderr(text: str) -> None:
    import sys
    print(text, file=sys.stderr, flush=True)


def build(prepared: PreparedMqtt, context) -> SpooledSink:
    sink = SpooledSink("mqtt", prepared.spool, prepared.every, context.names, context.log, prepared.link.send)
    sink.sends_parts = True  # on PREFIX/part, beside the frames
    sink.disconnect = prepared.link.close
    if context.parts is not None and context.parts.rule.trigger == "mqtt":
        prepared.link.on_trigger = context.parts.trigger
        prepared.link.client.subscribe(prepared.link.target.trigger_topic, qos=1)
        context.log(f"info: parts start on each message to {prepared.link.target.trigger_topic} (its text: the part id)")
    return sink
