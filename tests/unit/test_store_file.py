"""SqliteStore notices its file deleted or replaced under it (issue 8, item 13).

SQLite keeps writing to an unlinked inode without a word, and everything
written is gone at the next start. The store must refuse instead."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from zerodown.release import Release
from zerodown.store import SqliteStore, StoreFileLost

V1 = Release("web", "v1", "app --port {port}")
V2 = Release("web", "v2", "app --port {port}")


def test_a_deleted_file_refuses_writes_naming_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "zerodown.sqlite3"
    with SqliteStore(path) as store:
        store.add_release(V1)
        os.unlink(path)
        with caplog.at_level(logging.ERROR, "zerodown.store"):
            with pytest.raises(StoreFileLost, match=str(path)) as refused:
                store.add_release(V2)
            with pytest.raises(StoreFileLost):  # again, every time
                store.set_current("web", "v1")
        assert "deleted or replaced" in str(refused.value)
        assert [r.message for r in caplog.records].count(str(refused.value)) == 1  # logged once
        assert [r.version for r in store.releases("web")] == ["v1"]  # reads still answer
    # Nothing was written to a file nobody will open again.
    with SqliteStore(path) as reopened:
        assert reopened.releases("web") == []


def test_a_replaced_file_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.sqlite3"
    other = tmp_path / "other.sqlite3"
    with SqliteStore(path) as store, SqliteStore(other):
        store.add_release(V1)
        os.replace(other, path)  # a restore from backup, say: another inode at the path
        with pytest.raises(StoreFileLost):
            store.add_release(V2)


def test_an_untouched_file_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.sqlite3"
    with SqliteStore(path) as store:
        for version in ("v1", "v2", "v3"):
            store.add_release(Release("web", version, "app"))
    with SqliteStore(path) as reopened:
        assert len(reopened.releases("web")) == 3
