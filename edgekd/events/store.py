"""The event store: every defect frame of a run (its line message, its annotated picture and its mask as files beside
the database) and a summary per minute, in one SQLite database (stdlib sqlite3, WAL), queried by `edgekd events` and
the dashboard's history page.

Durability: the picture and the mask are written (atomically) before their row, and each row is committed on its
own, so after a kill -9 the database opens and holds every event committed before it, each with its files; a file
without a row (killed between the two) is removed by the next retention pass. WAL with synchronous=NORMAL survives a
killed process (not a power cut mid-write: synchronous=FULL would, at a cost per event).

Retention: events older than `keep_days`, and the oldest events while the store (database and files) is larger than
`max_mb`, are deleted with their files; checked when the store opens and once a minute."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgekdError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, frame INTEGER NOT NULL, camera TEXT, model TEXT,
    score REAL NOT NULL, verdict TEXT NOT NULL, defective INTEGER NOT NULL, reject INTEGER,
    regions INTEGER NOT NULL, message TEXT NOT NULL,
    picture TEXT, mask TEXT, bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS parts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, part TEXT NOT NULL, time REAL NOT NULL, camera TEXT,
    first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL, frames INTEGER NOT NULL,
    defect_frames INTEGER NOT NULL, verdict TEXT NOT NULL, worst_frame INTEGER, worst_score REAL, reject INTEGER,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS minutes (
    minute INTEGER NOT NULL, camera TEXT NOT NULL, frames INTEGER NOT NULL, defects INTEGER NOT NULL,
    max_score REAL NOT NULL, sum_score REAL NOT NULL, PRIMARY KEY (minute, camera)
);
"""
COLUMNS = ("id", "time", "frame", "camera", "model", "score", "verdict", "defective", "reject", "regions", "message",
           "picture", "mask")


@dataclass(frozen=True)
class EventFilter:
    since: float | None = None  # Unix seconds
    until: float | None = None
    min_score: float | None = None
    camera: str | None = None
    limit: int | None = None
    newest_first: bool = False

    def where(self) -> tuple[str, list]:
        clauses, values = [], []
        for clause, value in (("time >= ?", self.since), ("time < ?", self.until), ("score >= ?", self.min_score),
                              ("camera = ?", self.camera)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


def _connect(path: Path, create: bool, read_only: bool = False) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise EdgekdError(f"event store {path} does not exist: 'edgekd run --events {path}' writes one")
    try:
        if read_only:  # a reader beside the running writer (the dashboard's history page): WAL lets both go on
            return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                   timeout=10.0)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise EdgekdError(f"event store {path} cannot be opened ({exc}): give a writable folder, or another file") \
            from None
    return db


class EventStore:
    def __init__(self, path: Path, keep_days: float | None = None, max_mb: float | None = None, create: bool = True,
                 read_only: bool = False):
        self.path = Path(path)
        self.files = self.path.with_name(self.path.stem + "-files")  # pictures and masks beside the database
        if create:
            try:
                self.files.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EdgekdError(f"--events {self.path}: the folder for its pictures cannot be made ({exc.strerror})"
                                  ": give a writable place") from None
            if not os.access(self.path.parent, os.W_OK):
                raise EdgekdError(f"--events {self.path}: the folder {self.path.parent} is not writable: give a "
                                  "writable place")
        self.db = _connect(self.path, create, read_only)
        self.keep_days, self.max_mb = keep_days, max_mb
        self.removed = 0  # events removed by retention

    # ---------------------------------------------------------------- writing
    def add(self, message: dict, picture: Path | None, mask: Path | None) -> int:
        """One defect event, committed when this returns; its files must already be written."""
        size = sum(p.stat().st_size for p in (picture, mask) if p is not None and p.exists())
        cursor = self.db.execute(
            "INSERT INTO events (time, frame, camera, model, score, verdict, defective, reject, regions, message, "
            "picture, mask, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message["time"], message["frame"], message.get("camera"), message.get("model"), message["score"],
             message["verdict"], int(message["defective"]), None if message.get("reject") is None else
             int(message["reject"]), len(message.get("regions", [])), json.dumps(message, separators=(",", ":")),
             picture.name if picture else None, mask.name if mask else None, size))
        return int(cursor.lastrowid)

    def add_part(self, message: dict) -> None:
        """One part's verdict (edgekd/stream/parts.py), committed when this returns."""
        self.db.execute("INSERT INTO parts (part, time, camera, first_frame, last_frame, frames, defect_frames, "
                        "verdict, worst_frame, worst_score, reject, message) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (message["part"], message["time"], message.get("camera"), message["first_frame"],
                         message["last_frame"], message["frames"], message["defect_frames"], message["verdict"],
                         message["worst_frame"], message["worst_score"],
                         None if message.get("reject") is None else int(message["reject"]),
                         json.dumps(message, separators=(",", ":"))))

    def parts(self, selection: "EventFilter" = None) -> list[dict]:
        selection = selection or EventFilter()
        where, values = selection.where()
        limit = f" LIMIT {int(selection.limit)}" if selection.limit else ""
        rows = self.db.execute(f"SELECT message FROM parts{where.replace('score', 'worst_score')} ORDER BY time, id"
                               f"{limit}", values)
        return [json.loads(message) for (message,) in rows]

    def add_minute(self, minute: int, camera: str, frames: int, defects: int, max_score: float, sum_score: float):
        """The minute's counts, added to what an earlier write of the same minute (and camera) holds."""
        self.db.execute("INSERT INTO minutes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(minute, camera) DO UPDATE SET "
                        "frames = frames + excluded.frames, defects = defects + excluded.defects, "
                        "max_score = MAX(max_score, excluded.max_score), sum_score = sum_score + excluded.sum_score",
                        (minute, camera, frames, defects, max_score, sum_score))

    def apply_retention(self, now: float | None = None) -> int:
        """Delete events past `keep_days`, then the oldest while the store is over `max_mb`; and stray files (written
        for an event whose row a kill prevented). Returns how many events went."""
        removed = 0
        if self.keep_days is not None:
            cutoff = (now or time.time()) - self.keep_days * 86400.0
            removed += self._delete("WHERE time < ?", (cutoff,))
            self.db.execute("DELETE FROM minutes WHERE minute < ?", (int(cutoff // 60),))
            self.db.execute("DELETE FROM parts WHERE time < ?", (cutoff,))
        if self.max_mb is not None:
            limit = self.max_mb * 1e6
            while self.size_bytes() > limit:
                (count,) = self.db.execute("SELECT COUNT(*) FROM events").fetchone()
                if not count:
                    break
                removed += self._delete("WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                                        (max(1, count // 10),))
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._remove_strays()
        self.removed += removed
        return removed

    def _delete(self, where: str, values: tuple) -> int:
        rows = self.db.execute(f"SELECT picture, mask FROM events {where}", values).fetchall()
        self.db.execute(f"DELETE FROM events {where}", values)
        for name in (n for row in rows for n in row if n):
            (self.files / name).unlink(missing_ok=True)
        return len(rows)

    def _remove_strays(self) -> None:
        known = {n for row in self.db.execute("SELECT picture, mask FROM events") for n in row if n}
        for path in self.files.glob("*"):
            if path.name not in known and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        database = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        (files,) = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM events").fetchone()
        return database + int(files)

    # ---------------------------------------------------------------- reading
    def events(self, selection: EventFilter = EventFilter()) -> list[dict]:
        where, values = selection.where()
        limit = f" LIMIT {int(selection.limit)}" if selection.limit else ""
        order = "time DESC, id DESC" if selection.newest_first else "time, id"
        rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM events{where} ORDER BY {order}{limit}", values)
        return [dict(zip(COLUMNS, row)) for row in rows]

    def event(self, event_id: int) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        return dict(zip(COLUMNS, row)) if row else None

    def minutes(self, since: float | None = None, camera: str | None = None) -> list[dict]:
        rows = self.db.execute("SELECT minute, camera, frames, defects, max_score, sum_score FROM minutes "
                               "WHERE minute >= ? AND (? IS NULL OR camera = ?) ORDER BY minute",
                               (int((since or 0) // 60), camera, camera))
        return [{"minute": m, "camera": c, "frames": f, "defects": d, "max_score": mx,
                 "mean_score": s / f if f else 0.0} for m, c, f, d, mx, s in rows]

    def close(self) -> None:
        self.db.close()
