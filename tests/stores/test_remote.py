"""Reading stores and archives through URLs: a real HTTP server on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import threading
import zipfile

import numpy as np
import pytest
import xarray as xr

from scorebank.stores import schema as S
from scorebank.stores.archive import export_archive, import_archive
from scorebank.stores.errors import InvalidArgumentError, StoreNotFoundError
from scorebank.stores.location import open_scores
from scorebank.stores.remote import RemoteStoreError
from scorebank.stores.summary import summarize


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte-range support (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``);
    records every request as ``(method, path, range header)``."""

    requests: list = []

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            data = f.read()
        wanted = self.headers.get("Range")
        if wanted is None:
            self.send_response(200)
        else:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if m is None or m.group(1) == m.group(2) == "":
                self.send_error(416)
                return None
            if m.group(1) == "":
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            data = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder with a store and its archive, served over HTTP on a loopback address."""
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    root = tmp_path_factory.mktemp("served")
    score(resolve_config(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32),
          (0, 1), root / "scores.zarr", device="cpu")
    export_archive(root / "scores.zarr", root / "scores.scorebank.zip", creator="Lab A")
    handler = functools.partial(RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def assert_same_values(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize("member", ["scores.scorebank.zip", "scores.zarr", "scores.zarr/"])
def test_open_and_summarise_through_http(served, member):
    root, base = served
    remote = open_scores(f"{base}/{member}")
    local = open_scores(root / "scores.zarr")
    assert_same_values(local, remote)
    assert summarize(remote) == summarize(local)


def test_summarising_a_remote_archive_reads_no_score_chunks(served):
    root, base = served
    RangeHandler.requests.clear()
    summary = summarize(open_scores(f"{base}/scores.scorebank.zip"))
    assert [r.seed for r in summary.runs] == [0, 1]
    with zipfile.ZipFile(root / "scores.scorebank.zip") as zf:
        score_members = [(i.header_offset, i.header_offset + 30 + len(i.filename) + i.compress_size)
                         for i in zf.infolist() if i.filename.split("/")[0] in S.PER_EXAMPLE_SCORES]
    ranges = []
    for method, path, wanted in RangeHandler.requests:
        assert path == "/scores.scorebank.zip", path
        if wanted:
            a, b = wanted.removeprefix("bytes=").split("-")
            ranges.append((int(a), int(b) + 1))
    assert ranges, "the archive was read with range requests"
    for a, b in ranges:
        assert not any(a < end and start < b for start, end in score_members), (a, b)


def test_file_urls_name_local_stores_and_archives(served):
    root, _ = served
    local = open_scores(root / "scores.zarr")
    assert_same_values(local, open_scores((root / "scores.zarr").as_uri()))
    assert_same_values(local, open_scores((root / "scores.scorebank.zip").as_uri()))


def test_import_and_export_read_from_http_but_never_write_there(served, tmp_path):
    root, base = served
    dest = import_archive(f"{base}/scores.scorebank.zip", tmp_path / "imported.zarr")
    assert_same_values(open_scores(root / "scores.zarr"), open_scores(dest))
    again = export_archive(f"{base}/scores.zarr", tmp_path / "again.scorebank.zip")
    assert_same_values(open_scores(root / "scores.zarr"), open_scores(again.path))
    with pytest.raises(InvalidArgumentError, match="remote locations are read-only"):
        export_archive(root / "scores.zarr", f"{base}/new.scorebank.zip")
    with pytest.raises(InvalidArgumentError, match="remote locations are read-only"):
        import_archive(root / "scores.scorebank.zip", f"{base}/new.zarr")
    assert sorted(p.name for p in root.iterdir()) == ["scores.scorebank.zip", "scores.zarr"]
    assert all(method in ("GET", "HEAD") for method, _, _ in RangeHandler.requests)


def test_missing_remote_locations_are_reported(served):
    _, base = served
    with pytest.raises(StoreNotFoundError, match=re.escape(f"{base}/missing.zarr/zarr.json")):
        open_scores(f"{base}/missing.zarr")
    with pytest.raises(StoreNotFoundError, match="check the URL"):
        open_scores(f"{base}/missing.scorebank.zip")


def test_cli_info_and_inspect_accept_urls(served):
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    _, base = served
    result = CliRunner().invoke(app, ["info", f"{base}/scores.zarr", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["seed"] for r in json.loads(result.stdout)["runs"]] == [0, 1]
    result = CliRunner().invoke(app, ["inspect", f"{base}/scores.scorebank.zip", "--verify"])
    assert result.exit_code == 0, result.output
    assert "Lab A" in result.stdout and "verified" in result.stdout


def test_a_server_without_range_requests_is_reported(served):
    root, _ = served

    class Plain(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Plain, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemoteStoreError, match="does not support HTTP range requests"):
            open_scores(f"http://127.0.0.1:{server.server_address[1]}/scores.scorebank.zip")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_unknown_url_scheme_is_a_bad_argument():
    with pytest.raises(InvalidArgumentError, match="give a local path or a URL fsspec knows"):
        open_scores("nosuchscheme://bucket/scores.zarr")


def test_chunks_read_through_urls_are_checked_before_decoding(served, tmp_path):
    """A store directory served over HTTP whose chunk is a zstd frame without a stated
    size (4 MiB from a few hundred bytes): refused when read, naming the chunk."""
    import shutil
    import struct

    from scorebank.stores.location import UnsafeStoreError

    root, _ = served
    folder = tmp_path / "www"
    shutil.copytree(root / "scores.zarr", folder / "bomb.zarr")
    frame = bytearray(struct.pack("<I", 0xFD2FB528) + bytes([0x00, 0x38]))  # no content size
    for last in [0] * 31 + [1]:
        frame += struct.pack("<I", last | (1 << 1) | ((128 << 10) << 3))[:3] + b"\x00"  # 128 KiB RLE block
    (folder / "bomb.zarr" / S.LABEL / "c" / "0").write_bytes(bytes(frame))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ds = open_scores(f"http://127.0.0.1:{server.server_address[1]}/bomb.zarr")
        with pytest.raises(UnsafeStoreError, match=r"chunk 'label/c/0' of array 'label' does not state its "
                                                   r"decompressed size"):
            ds[S.LABEL].values
        np.testing.assert_array_equal(ds[S.MARGIN].values, open_scores(root / "scores.zarr")[S.MARGIN].values)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
