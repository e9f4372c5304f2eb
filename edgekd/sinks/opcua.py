"""`edgekd run --opcua opc.tcp://HOST:PORT`: an OPC UA server the PLC reads, as a vision sensor presents itself.
Under Objects/edgekd (namespace urn:edgekd), updated per frame:

    Verdict (String "ok"/"defect"), Defect (Boolean), Reject (Boolean: --reject-if, else Defect), Score (Double),
    DefectCount (UInt32: regions of the frame), FrameCounter (UInt64), DefectFrames (UInt64: frames with a DEFECT
    verdict since the start; a PLC latches a change of it), PartId (String), LastFrameTime (DateTime),
    Health (String: "starting", "running", "stopped")
and, set once: Model, Camera (String), ImageThreshold, PixelThreshold (Double).

Parts (--part-frames, --part-trigger): PartId is the part of the last frame; PartCounter, LastPartId,
LastPartVerdict, LastPartDefect, LastPartReject, LastPartWorstScore and LastPartWorstFrame are set when a part ends.
With --part-trigger opcua the PLC writes the new part's id to PartTrigger when a part enters the view.

Every node but PartTrigger is read-only for clients. Anonymous access is allowed on a loopback address only;
anywhere else the server requires a user name and password (--opcua-auth-file, first line USER:PASSWORD) and
refuses to start without one, as the dashboard does without a token. The server runs asyncua in its own thread and event loop; the
runner's sink thread only hands it the newest values, so a slow client never holds a frame up."""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from edgekd.addresses import resolves_to_loopback
from edgekd.errors import EdgekdError
from edgekd.sinks.ages import Ages
from edgekd.sinks.base import Result, Sink
from edgekd.secret_files import read_credentials

NAMESPACE = "urn:edgekd"
START_WAIT_S = 15.0
# At most one update of the nodes per this many seconds: every frame of a 25-50 FPS camera, and at higher rates the
# newest values (the counters stay exact). Writing every frame at 60 FPS cost the run 13% of its frames per second
# on 2 cores; no PLC cycle or OPC UA subscription reads faster than this.
WRITE_EVERY_S = 0.02
# name -> (OPC UA type name, initial value)
NODES = {"Verdict": ("String", "ok"), "Defect": ("Boolean", False), "Reject": ("Boolean", False),
         "Score": ("Double", 0.0), "DefectCount": ("UInt32", 0), "FrameCounter": ("UInt64", 0),
         "DefectFrames": ("UInt64", 0), "PartId": ("String", ""),
         "LastFrameTime": ("DateTime", datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)),
         "Health": ("String", "starting"), "Model": ("String", ""), "Camera": ("String", ""),
         "ImageThreshold": ("Double", 0.0), "PixelThreshold": ("Double", 0.0),
         # parts (--part-frames, --part-trigger): the last part's verdict, set when it ends
         "PartCounter": ("UInt64", 0), "LastPartId": ("String", ""), "LastPartVerdict": ("String", ""),
         "LastPartDefect": ("Boolean", False), "LastPartReject": ("Boolean", False),
         "LastPartWorstScore": ("Double", 0.0), "LastPartWorstFrame": ("Int64", -1),
         # the one node a client may write (--part-trigger opcua): a part starts, the text written is its id
         "PartTrigger": ("String", "")}
TRIGGER = "PartTrigger"


@dataclass(frozen=True)
class OpcuaAddress:
    url: str
    host: str
    port: int
    loopback: bool


def parse_address(url: str) -> OpcuaAddress:
    parts = urlsplit(url)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise EdgekdError(f"--opcua {url!r} is not an OPC UA address: give opc.tcp://HOST:PORT, e.g. "
                          "opc.tcp://127.0.0.1:4840")
    try:
        port = parts.port or 4840
    except ValueError:
        raise EdgekdError(f"--opcua {url!r}: the port must be a number from 1 to 65535") from None
    return OpcuaAddress(url, parts.hostname, port, resolves_to_loopback(parts.hostname, port))


class _Users:
    """One user name and password; every other identity (anonymous included) is refused."""

    def __init__(self, user: str, password: str):
        self.user, self.password = user, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole
        if username is not None and hmac.compare_digest(str(username), self.user) and \
                hmac.compare_digest(str(password or ""), self.password):
            return User(role=UserRole.User, name=username)
        return None


class OpcuaServer:
    def __init__(self, address: OpcuaAddress, credentials: tuple[str, str] | None):
        if not address.loopback and credentials is None:
            raise EdgekdError(f"--opcua {address.url} is reachable from other machines: give --opcua-auth-file with "
                              "USER:PASSWORD (anonymous access is for loopback addresses only)")
        self.address, self.credentials = address, credentials
        self.loop = asyncio.new_event_loop()
        self.nodes: dict = {}
        self._latest: dict | None = None
        self._wake: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="edgekd-opcua", daemon=True)
        self.server = None
        self.ages = Ages()  # each frame's age when its values are on the nodes
        self.on_trigger = None  # (part id or None) -> None: the PLC wrote PartTrigger (--part-trigger opcua)
        self._trigger_ready = False  # the subscription's first notification is the initial value, not a write

    def start(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.ERROR)  # its per-session chatter is not the run's log
        self._thread.start()
        if not self._ready.wait(START_WAIT_S):
            raise EdgekdError(f"--opcua {self.address.url}: the server did not start within {START_WAIT_S:g} s")
        if self._failure is not None:
            raise EdgekdError(f"--opcua {self.address.url} cannot listen ({self._failure}): choose another port, or "
                              "stop what holds this one") from None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_until_complete(self._writer())

    async def _setup(self) -> None:
        from asyncua import Server, ua
        self.server = Server(user_manager=_Users(*self.credentials) if self.credentials else None)
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://{self.address.host}:{self.address.port}/edgekd/")
        self.server.set_server_name("edgekd")
        self.server.set_identity_tokens([ua.UserNameIdentityToken] if self.credentials else
                                        [ua.AnonymousIdentityToken])
        index = await self.server.register_namespace(NAMESPACE)
        folder = await self.server.nodes.objects.add_object(index, "edgekd")
        for name, (kind, value) in NODES.items():
            self.nodes[name] = await folder.add_variable(index, name, value, getattr(ua.VariantType, kind))
        await self.nodes[TRIGGER].set_writable()
        handler = _TriggerHandler(self)
        subscription = await self.server.create_subscription(50, handler)
        await subscription.subscribe_data_change(self.nodes[TRIGGER])
        self._wake = asyncio.Event()
        self._types = {name: getattr(ua.VariantType, kind) for name, (kind, _) in NODES.items()}
        await self.server.start()

    async def _writer(self) -> None:
        """Writes the newest values whenever there are new ones; stops when told (values None)."""
        from asyncua import ua
        while True:
            await self._wake.wait()
            self._wake.clear()
            values, self._latest = self._latest, None
            if values is None:
                continue
            stop = values.pop("_stop", False)
            for name, value in values.items():  # the server's direct write: no session, no access check to pay
                await self.server.write_attribute_value(self.nodes[name].nodeid,
                                                        ua.DataValue(ua.Variant(value, self._types[name])))
            if "LastFrameTime" in values:
                self.ages.add(values["LastFrameTime"].timestamp())
            if stop:
                await self.server.stop()
                # sessions of clients still connected keep tasks of their own: end them with the loop
                others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)
                return
            await asyncio.sleep(WRITE_EVERY_S)  # frames faster than this are merged: the newest of each value wins

    def publish(self, values: dict) -> None:
        """Hand the server new values (merged with any not yet written: the newest of each wins)."""
        def merge():
            self._latest = {**(self._latest or {}), **values}
            self._wake.set()
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(merge)

    def close(self) -> None:
        if self._thread.is_alive():
            self.publish({"Health": "stopped", "_stop": True})
            self._thread.join(10.0)
        if not self.loop.is_closed() and not self._thread.is_alive():
            self.loop.close()


class _TriggerHandler:
    """The server's own subscription to PartTrigger: each client write starts a part."""

    def __init__(self, server: "OpcuaServer"):
        self.server = server

    def datachange_notification(self, node, value, data) -> None:
        if not self.server._trigger_ready:
            self.server._trigger_ready = True
            return
        if self.server.on_trigger is not None:
            written = data.monitored_item.Value
            when = written.SourceTimestamp or written.ServerTimestamp  # when the PLC wrote it, not when we heard
            self.server.on_trigger(str(value).strip() or None, when.timestamp() if when else None)


class OpcuaSink(Sink):
    name = "opcua"

    def __init__(self, server: OpcuaServer, names: dict, thresholds):
        self.server, self.frames, self.defect_frames, self.parts = server, 0, 0, 0
        server.publish({"Model": str(names.get("model") or ""), "Camera": str(names.get("source") or ""),
                        "ImageThreshold": float(thresholds.image), "PixelThreshold": float(thresholds.pixel),
                        "Health": "running"})

    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        self.frames += 1
        self.defect_frames += int(result.verdict)
        self.server.publish({
            "Verdict": "defect" if result.verdict else "ok", "Defect": bool(result.verdict),
            "Reject": bool(result.rejected if result.rejected is not None else result.verdict),
            "Score": float(result.score), "DefectCount": len(result.regions), "FrameCounter": self.frames,
            "DefectFrames": self.defect_frames, **({"PartId": result.part} if result.part is not None else {}),
            "LastFrameTime": datetime.datetime.fromtimestamp(result.timestamp, datetime.timezone.utc)})

    def write_part(self, part, message: dict) -> None:
        self.parts += 1
        self.server.publish({"PartCounter": self.parts, "LastPartId": part.id,
                             "LastPartVerdict": "defect" if part.verdict else "ok", "LastPartDefect": part.verdict,
                             "LastPartReject": bool(part.rejected if part.rejected is not None else part.verdict),
                             "LastPartWorstScore": float(part.worst_score), "LastPartWorstFrame": part.worst_frame})

    def counters(self) -> dict:
        return {"frames": self.frames, "defect_frames": self.defect_frames, "parts": self.parts,
                **self.server.ages.summary()}

    def close(self) -> None:
        self.server.close()


def prepare(request) -> OpcuaServer:
    address = parse_address(request.opcua)
    credentials = read_credentials(request.opcua_auth_file, "--opcua-auth-file") if request.opcua_auth_file else None
    server = OpcuaServer(address, credentials)
    server.start()  # listening now: a taken port fails before the model loads
    return server


def build(server: OpcuaServer, context) -> OpcuaSink:
    context.log(f"info: OPC UA server at opc.tcp://{server.address.host}:{server.address.port}/edgekd/ "
                f"({'user name and password' if server.credentials else 'anonymous, loopback only'})")
    if context.parts is not None and context.parts.rule.trigger == "opcua":
        server.on_trigger = context.parts.trigger
        context.log(f"info: parts start on each write to the {TRIGGER} node (the text written: the part id)")
    return OpcuaSink(server, context.names, context.thresholds)
