"""Where frames come from, behind one interface: camera index (V4L2), video file, RTSP/HTTP stream, image folder,
Jetson CSI camera (csi://N, an nvarguscamerasrc GStreamer pipeline) and raw GStreamer pipelines (gst:...).

`read()` answers one of four things: a frame, a corrupt frame (skip it), the end (files and folders), or a
lost source (live sources: the runner reconnects with backoff via `reopen()`).
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgekd.data.images import IMAGE_SUFFIXES, decode
from edgekd.errors import EdgekdError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
GSTREAMER_FIX = ("OpenCV from pip has no GStreamer: on a Jetson use JetPack's OpenCV (sudo apt install python3-opencv, "
                 "a venv made with --system-site-packages, and pip uninstall opencv-python); elsewhere build OpenCV "
                 "with -DWITH_GSTREAMER=ON")

OK, CORRUPT, END, LOST = "ok", "corrupt", "end", "lost"
MAX_FAILED_READS = 250  # failed reads in a row after which a file counts as ended (about 10 s of video)


@dataclass
class Read:
    status: str  # OK, CORRUPT, END or LOST
    image: np.ndarray | None = None  # BGR uint8 (H,W,3) when OK
    timestamp: float | None = None  # seconds into a file, when the source knows
    name: str | None = None  # the image file, for folder sources


@dataclass(frozen=True)
class CaptureSettings:
    width: int | None = None
    height: int | None = None
    fps: float | None = None


def opencv_has_gstreamer() -> bool:
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() == "YES")


def valid_frame(image) -> bool:
    return isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.size > 0 \
        and image.dtype == np.uint8


class Source:
    """Life cycle: open() -> read() until END (or forever, for live sources) -> close()."""

    live = False  # live sources drop stale frames and reconnect; files and folders deliver every frame
    description = "source"

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> Read:
        raise NotImplementedError

    @property
    def fps(self) -> float | None:
        """Frames per second the source reports, when it knows."""
        return None

    @property
    def drops_when_busy(self) -> bool:
        """Frames come at the source's own pace whether or not they are taken (a camera, a stream, --realtime): when
        the runner is busy the oldest waiting frame is dropped, and counted, instead of the run falling behind."""
        return self.live

    @property
    def frame_count(self) -> int | None:
        """How many frames a file or folder holds, when it says (a run that ends before reading them all did not
        finish); None for live sources."""
        return None

    def reopen(self) -> bool:
        """After LOST: one attempt to get the source back; True when it is back."""
        self.close()
        try:
            self.open()
            return True
        except EdgekdError:
            return False

    def close(self) -> None:
        pass


class CaptureSource(Source):
    """Anything cv2.VideoCapture opens."""

    def __init__(self, target, api: int, description: str, live: bool, settings: CaptureSettings = CaptureSettings()):
        self.target, self.api, self.description, self.live, self.settings = target, api, description, live, settings
        self.capture: cv2.VideoCapture | None = None
        self.failed_in_a_row = 0  # failed reads since the last good frame (files only)
        self._frame_count: int | None = None

    def _failure(self) -> str:
        return f"{self.description} could not be opened: check the path or address and that it plays (e.g. ffplay)"

    def open(self) -> None:
        capture = cv2.VideoCapture(self.target, self.api)
        if not capture.isOpened():
            capture.release()
            raise EdgekdError(self._failure())
        if self.settings.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.width)
        if self.settings.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.height)
        if self.settings.fps:
            capture.set(cv2.CAP_PROP_FPS, self.settings.fps)
        self.capture = capture
        total = capture.get(cv2.CAP_PROP_FRAME_COUNT)  # kept: the summary asks after the capture is released
        self._frame_count = int(total) if total > 0 and not self.live else None

    @property
    def fps(self) -> float | None:
        value = self.capture.get(cv2.CAP_PROP_FPS) if self.capture is not None else 0.0
        return float(value) if 0 < value < 1000 else self.settings.fps

    @property
    def frame_count(self) -> int | None:
        return self._frame_count

    def read(self) -> Read:
        ok, image = self.capture.read()
        if not ok:
            return Read(LOST) if self.live else self._after_failed_read()
        self.failed_in_a_row = 0
        if not valid_frame(image):
            return Read(CORRUPT)
        position = None if self.live else self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return Read(OK, image, position)

    def _after_failed_read(self) -> Read:
        """A file that fails to decode before its last frame has a damaged patch, not an end: skip one frame past
        it (a seek re-syncs the demuxer) and count it corrupt; the end is the frame count, or a long run of failures."""
        total = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        position = self.capture.get(cv2.CAP_PROP_POS_FRAMES)
        self.failed_in_a_row += 1
        if total <= 0 or position >= total - 1 or self.failed_in_a_row > MAX_FAILED_READS:
            return Read(END)
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, position + 1)
        return Read(CORRUPT)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class CameraSource(CaptureSource):
    def __init__(self, index: int, settings: CaptureSettings = CaptureSettings()):
        super().__init__(index, cv2.CAP_V4L2 if os.name == "posix" else cv2.CAP_ANY, f"camera {index}", True, settings)
        self.index = index

    def _failure(self) -> str:
        devices = sorted(glob.glob("/dev/video*"))
        here = ", ".join(devices) if devices else "none"
        return (f"camera {self.index} not found (tried V4L2 index {self.index}, i.e. /dev/video{self.index}; video "
                f"devices on this machine: {here}): plug the camera in, check 'v4l2-ctl --list-devices', pick another "
                "--camera index, or use --source for a file or stream")


class FolderSource(Source):
    """Images of a folder in name order; unreadable files count as corrupt frames."""

    def __init__(self, folder: Path):
        self.folder, self.description = folder, f"folder {folder}"
        self.paths: list[Path] = []
        self.position = 0

    def open(self) -> None:
        # every entry named like an image: folders and broken links among them are counted (corrupt) and named
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise EdgekdError(f"folder {self.folder} holds no images (.png, .jpg, .bmp, ...): point --source at "
                              "a folder of frames")
        self.position = 0

    @property
    def frame_count(self) -> int | None:
        return len(self.paths)

    def read(self) -> Read:
        if self.position >= len(self.paths):
            return Read(END)
        path = self.paths[self.position]
        self.position += 1
        image = decode(path, cv2.IMREAD_COLOR) if path.is_file() else None
        return Read(OK, image, None, path.name) if valid_frame(image) else Read(CORRUPT, name=path.name)


class PacedSource(Source):
    """A file or folder delivered at a frame rate, as a camera would deliver it (`--realtime`): a recorded clip
    stands in for the line's camera, e.g. to try the dashboard or a service before the camera is mounted."""

    def __init__(self, inner: Source, fps: float):
        self.inner, self.period = inner, 1.0 / fps
        self.description = f"{inner.description} at {fps:g} fps"
        self.started: float | None = None
        self.delivered = 0

    @property
    def fps(self) -> float | None:
        return 1.0 / self.period

    @property
    def drops_when_busy(self) -> bool:
        return True  # like the camera it stands in for: a frame not taken in time is gone

    @property
    def frame_count(self) -> int | None:
        return self.inner.frame_count

    def open(self) -> None:
        self.inner.open()
        self.started, self.delivered = None, 0

    def read(self) -> Read:
        read = self.inner.read()
        if read.status in (OK, CORRUPT):
            if self.started is None:
                self.started = time.monotonic()
            else:
                time.sleep(max(0.0, self.started + self.delivered * self.period - time.monotonic()))
            self.delivered += 1
        return read

    def close(self) -> None:
        self.inner.close()


class LoopedSource(Source):
    """A file or folder played again from its start each time it ends (`--loop`), until the run is stopped: a short
    clip keeps a dashboard or a service busy. It has no end, so no frame count."""

    def __init__(self, inner: Source):
        self.inner, self.loops = inner, 0
        self.description = f"{inner.description} (looped)"

    @property
    def fps(self) -> float | None:
        return self.inner.fps

    def open(self) -> None:
        self.inner.open()

    def read(self) -> Read:
        read = self.inner.read()
        if read.status == END:
            self.inner.close()
            self.inner.open()
            self.loops += 1
            read = self.inner.read()  # END again: nothing in it to play
        return read

    def close(self) -> None:
        self.inner.close()


def csi_pipeline(sensor: int, settings: CaptureSettings) -> str:
    width, height, fps = settings.width or 1920, settings.height or 1080, int(settings.fps or 30)
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={fps}/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1")


def quiet_opencv() -> None:
    """OpenCV warns on stderr for every failed open; edgekd says what failed itself, in one line."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own messages (AV_LOG_QUIET); read when first used
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)


def open_source(spec: str | int, settings: CaptureSettings = CaptureSettings(), realtime: bool = False,
                loop: bool = False) -> Source:
    """'0' or 0 -> camera; csi://N; gst:<pipeline>; rtsp/http/... -> stream; a folder; a video file. `realtime`
    paces a file or folder at --fps (or the file's own rate); `loop` plays it again each time it ends."""
    quiet_opencv()
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text):
        source: Source = CameraSource(int(text), settings)
    elif text.startswith("/dev/video"):
        source = CameraSource(int(re.sub(r"\D", "", text) or 0), settings)
    elif text.startswith(("csi://", "gst:")):
        if not opencv_has_gstreamer():
            raise EdgekdError(f"{text} needs OpenCV with GStreamer, and this OpenCV has none: {GSTREAMER_FIX}")
        if text.startswith("csi://"):
            sensor = text[len("csi://"):] or "0"
            if not sensor.isdigit():
                raise EdgekdError(f"{text}: the CSI sensor must be a number, e.g. csi://0")
            pipeline, description = csi_pipeline(int(sensor), settings), f"CSI camera {sensor}"
        else:
            pipeline, description = text[len("gst:"):], "GStreamer pipeline"
        source = CaptureSource(pipeline, cv2.CAP_GSTREAMER, description, True)
    elif text.lower().startswith(STREAM_SCHEMES):
        source = CaptureSource(text, cv2.CAP_FFMPEG, f"stream {text}", True)
    else:
        path = Path(text)
        if path.is_dir():
            source = FolderSource(path)
        elif path.is_file():
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise EdgekdError(f"{path} is not a video file edgekd knows ({', '.join(sorted(VIDEO_SUFFIXES))}): "
                                  "pass a video, a folder of images, a camera index or a stream URL")
            source = CaptureSource(str(path), cv2.CAP_FFMPEG, f"video {path}", False)
        else:
            raise EdgekdError(f"source '{text}' is neither a camera index, a stream URL (rtsp://, http://), csi://N, "
                              "gst:..., a folder nor an existing video file")
    if realtime and source.live:
        raise EdgekdError(f"--realtime paces files and folders; {source.description} already delivers in real time")
    if loop and source.live:
        raise EdgekdError(f"--loop plays a file or folder again; {source.description} is live and never ends")
    source.open()
    if loop:
        source = LoopedSource(source)
    if realtime:
        fps = settings.fps or source.fps
        if not fps:
            source.close()
            raise EdgekdError(f"{source.description} has no frame rate of its own: give --realtime a rate with --fps")
        source = PacedSource(source, fps)
    return source
