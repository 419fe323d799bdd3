"""The output directory: key-addressed MP4s, one durable record per render, and Parquet index shards.

Layout of OUT (a local path or any pyarrow filesystem URI: file://, s3://, gs://):
    videos/<kk>/<key>.mp4        the render (kk = first two hex digits of the key)
    records/<kk>/<key>.json      its outcome: written only after the MP4 is durable, so a record means done
    index/part-NNNNN.parquet     one row per manifest row (status, hashes, params, timings, passthrough columns)
    summary.json                 the run's summary
Every write is atomic (temp object + rename), so a crash leaves either the old file or the new one, plus at most
an orphaned temp object (`<target>.tmp-<writer tag>-<random>`) that the next finished run sweeps away
(`remove_orphaned_temps`).
Actors write videos and records directly; the driver writes the index and summary. Nothing depends on the
driver's local disk.
"""
from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a local path or a URI such as s3://bucket/prefix."""
    if "://" in uri:
        fs, root = pafs.FileSystem.from_uri(uri)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    return fs, root.rstrip("/") or "/"


TEMP_MARK = ".tmp-"
STALE_TEMP_S = 24 * 3600  # a write takes seconds: a temp object this old belongs to no live writer


@dataclass
class Store:
    uri: str
    writer_tag: str = "w"  # names this writer's temp objects, so that its run can find the ones a killed actor left

    def __post_init__(self):
        self.fs, self.root = open_fs(self.uri)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @staticmethod
    def video_relpath(key: str) -> str:
        return f"videos/{key[:2]}/{key}.mp4"

    @staticmethod
    def record_relpath(key: str) -> str:
        return f"records/{key[:2]}/{key}.json"

    def local_path(self, relpath: str) -> str | None:
        """A local filesystem path for `relpath` when OUT is local (for tools that need a real file)."""
        return self.path(relpath) if self._local else None

    # ------------------------------------------------------------------ atomic writes
    def _ensure_dir(self, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write `data` atomically: to a unique temp object beside the target, then rename over it."""
        final = self.path(relpath)
        self._ensure_dir(final)
        tmp = f"{final}{TEMP_MARK}{self.writer_tag}-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        if self._local:
            with open(tmp, "rb+") as fh:  # durable before the rename makes it visible
                os.fsync(fh.fileno())
        self.fs.move(tmp, final)

    def remove_orphaned_temps(self, now: float | None = None) -> int:
        """Delete the temp objects that writers killed mid-write left behind: those of this store's writer tag (call
        only once every writer sharing the tag has stopped) and any older than STALE_TEMP_S. Returns how many."""
        now = time.time() if now is None else now
        mine = f"{TEMP_MARK}{self.writer_tag}-"
        removed = 0
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True)):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.File or TEMP_MARK not in name:
                continue
            stale = info.mtime is not None and now - info.mtime.timestamp() > STALE_TEMP_S
            if mine in name or stale:
                try:
                    self.fs.delete_file(info.path)
                    removed += 1
                except OSError:  # renamed by its writer after all, or not ours to delete: housekeeping, never fatal
                    pass
        return removed

    def upload_file(self, local_file: str, relpath: str) -> None:
        with open(local_file, "rb") as f:
            self.write_bytes(relpath, f.read())

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open_input_stream(self.path(relpath)) as f:
            return f.read()

    def exists(self, relpath: str) -> bool:
        return self.fs.get_file_info(self.path(relpath)).type == pafs.FileType.File

    # ------------------------------------------------------------------ records
    def write_record(self, record: dict) -> None:
        self.write_bytes(self.record_relpath(record["key"]), json.dumps(record, sort_keys=True, default=str).encode())

    def read_record(self, key: str) -> dict | None:
        try:
            return json.loads(self.read_bytes(self.record_relpath(key)))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def all_records(self) -> dict[str, dict]:
        """Every record in OUT keyed by render key (one directory listing, then the JSON files)."""
        sel = pafs.FileSelector(self.path("records"), recursive=True, allow_not_found=True)
        out = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File and info.path.endswith(".json"):
                key = posixpath.basename(info.path)[: -len(".json")]
                rec = self.read_record(key)
                if rec is not None:
                    out[key] = rec
        return out

    def done_keys(self, records: dict[str, dict] | None = None) -> set[str]:
        """Keys whose render is complete: an `ok` record whose MP4 still exists (`records`: already read ones)."""
        records = self.all_records() if records is None else records
        return {k for k, r in records.items() if r.get("status") == "ok" and self.exists(r["mp4_path"])}

    # ------------------------------------------------------------------ index and summary
    def write_index(self, table: pa.Table, shard_rows: int) -> list[str]:
        """Replace the index with `table`, split into shards of `shard_rows` rows, each written atomically."""
        written = []
        for i, start in enumerate(range(0, max(1, table.num_rows), shard_rows)):
            sink = pa.BufferOutputStream()
            pq.write_table(table.slice(start, shard_rows), sink, compression="zstd")
            rel = f"index/part-{i:05d}.parquet"
            self.write_bytes(rel, sink.getvalue().to_pybytes())
            written.append(rel)
        # shards beyond the new count belong to an older, longer index: remove them
        sel = pafs.FileSelector(self.path("index"), allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            rel = posixpath.relpath(info.path, self.root)
            if rel.endswith(".parquet") and rel not in written:
                self.fs.delete_file(info.path)
        return written

    def read_index(self) -> pa.Table:
        sel = pafs.FileSelector(self.path("index"), allow_not_found=True)
        parts = sorted(i.path for i in self.fs.get_file_info(sel) if i.path.endswith(".parquet"))
        if not parts:
            raise FileNotFoundError(f"{self.uri}: no index/*.parquet (has this directory been rendered into?)")
        tables = []
        for p in parts:
            with self.fs.open_input_file(p) as f:
                tables.append(pq.read_table(f))
        return pa.concat_tables(tables, promote_options="default")

    def write_json(self, relpath: str, obj) -> None:
        self.write_bytes(relpath, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
