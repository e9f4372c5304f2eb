"""A bounded, ordered, on-disk queue of messages for one line output (MQTT, webhook): every message is written here
first and removed only once the receiver acknowledged it, so a broker that is away, a receiver that fails or a
killed run loses nothing that was queued (the next run with the same spool sends what is left, first).

SQLite (stdlib) in WAL mode: one file, survives kill -9 (a committed insert is on disk), ordered by an autoincrement
id. Bounded by message count: when full, the OLDEST message is dropped to make room and counted (a line wants the
newest verdicts; the count says how many were lost, never silently)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from edgekd.errors import EdgekdError

DEFAULT_LIMIT = 100_000  # messages; at 25 FPS per-frame output, about an hour of a broker outage


class Spool:
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT):
        if limit < 1:
            raise EdgekdError(f"spool limit {limit} must be at least 1 message")
        self.path, self.limit = Path(path), int(limit)
        self._lock = threading.Lock()  # the runner's sink thread writes, the delivery thread reads and removes
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed message survives a killed process
            self._db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "payload BLOB NOT NULL)")
        except (sqlite3.Error, OSError) as exc:
            raise EdgekdError(f"spool {self.path} cannot be opened ({exc}): give a writable folder with --spool") \
                from None
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def push(self, payload: bytes) -> None:
        """Queue one message (committed when this returns); when full, the oldest one makes room and is counted."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO messages (payload) VALUES (?)", (payload,))
                (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
                over = count - self.limit
                if over > 0:
                    self._db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                                     (over,))
                    self.dropped += over
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def peek(self, count: int = 1) -> list[tuple[int, bytes]]:
        """The oldest `count` messages, (id, payload), still queued."""
        with self._lock:
            return self._db.execute("SELECT id, payload FROM messages ORDER BY id LIMIT ?", (count,)).fetchall()

    def remove(self, message_id: int) -> None:
        """The receiver has it: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
