"""Store calls recorded as a function makes them, for figure 2's raw pymongo replay."""

from __future__ import annotations

import itertools
import threading
from typing import Any

#: (sequence number, collection, method, args, kwargs); collection "" is a database command.
Op = tuple[int, str, str, tuple[Any, ...], dict[str, Any]]
DB_COMMAND = ""
RECORDED = frozenset({"bulk_write", "find", "find_one", "insert_one", "update_one",
                      "find_one_and_update", "update_many", "replace_one", "delete_one",
                      "create_index"})


class Recorder:
    """The store calls of the delivery a thread is handling, numbered in the order made."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.numbers = itertools.count()

    def begin(self) -> list[Op]:
        self.local.ops = []
        ops: list[Op] = self.local.ops
        return ops

    def add(self, collection: str, method: str, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> None:
        ops = getattr(self.local, "ops", None)
        if ops is not None:
            ops.append((next(self.numbers), collection, method, args, kwargs))


class RecordingCollection:
    def __init__(self, collection: Any, recorder: Recorder) -> None:
        self._collection, self._recorder = collection, recorder

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if name not in RECORDED:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._recorder.add(self._collection.name, name, args, kwargs)
            return attr(*args, **kwargs)

        return call


class RecordingDatabase:
    def __init__(self, db: Any, recorder: Recorder) -> None:
        self._db, self._recorder = db, recorder

    def __getitem__(self, name: str) -> RecordingCollection:
        return RecordingCollection(self._db[name], self._recorder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self._recorder.add(DB_COMMAND, "command", args, kwargs)
        return self._db.command(*args, **kwargs)
