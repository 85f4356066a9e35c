"""TensorBoard event files: scalar curves of each run directory.

Events are decoded with the ``tensorboard`` package's protobuf definitions
(``tensorboard.compat.proto.event_pb2``); both scalar encodings are read: ``simple_value``
(PyTorch's ``SummaryWriter``, tensorboardX, Megatron) and 0-d float tensors
(``tensorboard.summary.Writer``, TF2 ``tf.summary.scalar``). The TFRecord framing around
the events (length, masked CRC-32C, data, masked CRC-32C) is read here: without
TensorFlow, tensorboard's own record reader computes CRC-32C one byte at a time in Python,
several times too slow for the ingest bar (``benchmarks/results/ingest.md`` compares them).
Here the checksums of all records of a file are computed together with NumPy; every header
is checked, and the data of every record that contributed a scalar. The tests compare the
result with tensorboard's ``EventFileLoader``.
"""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .logs import Curve, RunLog, RunRef, walk_files

__all__ = ["find_runs", "is_event_file", "masked_crc32c", "read_run"]

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8  # TFRecord's checksum mask
_HEADER = 8  # uint64 length
_CRC = 4
_FLOAT_DTYPES = {1: np.float32, 2: np.float64, 19: np.float16}  # DT_FLOAT, DT_DOUBLE, DT_HALF


def is_event_file(name: str) -> bool:
    return "tfevents" in name


def find_runs(directory: Path) -> list[RunRef]:
    """One run per directory holding event files; named by its path below ``directory``.

    Event files of one directory are read in the natural order of their names
    (``events.out.tfevents.<time>.<host>.<pid>.<n>``: creation time first, numbers compared
    as numbers), so a restarted job's later file comes last.
    """
    refs = []
    for root, files in walk_files(directory):
        events = sorted((f for f in files if is_event_file(f)), key=_natural_key)
        if not events:
            continue
        rel = Path(root).relative_to(directory).as_posix()
        name = Path(directory).resolve().name if rel == "." else rel
        paths = tuple(Path(root) / f for f in events)
        refs.append(RunRef(name, "tensorboard", str(root), functools.partial(read_run, name, paths)))
    return refs


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def read_run(name: str, paths, tags: frozenset | None = None) -> RunLog:
    """Read the scalar curves of one run from its event files (in the given order).

    Parameters
    ----------
    name : str
        Run name.
    paths : sequence of path
        The run's event files, oldest first.
    tags : set of str or None
        Keep only these tags (all when None); every scalar tag is still listed in
        :attr:`RunLog.tags`.

    Raises
    ------
    DataError
        A file that is not an event file or fails a checksum (corrupt). A truncated last
        record (a job killed while writing) is skipped and counted in
        ``attrs["truncated_records"]``.
    """
    try:
        from tensorboard.compat.proto import event_pb2
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise DataError("reading TensorBoard event files needs the tensorboard package: pip install 'bayes-scaling[ingest]'") from exc
    parse = event_pb2.Event.FromString
    chunks: dict[str, list] = {}  # tag -> one (steps, values, file index) per file
    is_scalar: dict[str, bool] = {}  # decided by a tag's first value when the tag is not kept
    truncated = 0
    for index, path in enumerate(paths):
        buf = Path(path).read_bytes()
        offsets, lengths, tail = _frames(buf, path)
        truncated += tail
        columns: dict[str, tuple[list, list, list]] = {}  # tag -> record indices, steps, values
        for i, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist())):
            start = offset + _HEADER + _CRC
            try:
                event = parse(buf[start : start + length])
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                _check_data_crcs(buf, offsets[i : i + 1], lengths[i : i + 1], path)  # name the checksum when it is the cause
                raise DataError(f"{path}: record at byte {offset} is not a TensorBoard event (corrupt file?): {exc}") from exc
            if not event.HasField("summary"):
                continue
            step = event.step
            for value in event.summary.value:
                tag = value.tag
                if tags is not None and tag not in tags:
                    if tag not in is_scalar:
                        is_scalar[tag] = _scalar(value) is not None
                    continue
                number = _scalar(value)
                if number is None:
                    continue
                column = columns.get(tag)
                if column is None:
                    column = columns[tag] = ([], [], [])
                    is_scalar[tag] = True
                column[0].append(i)
                column[1].append(step)
                column[2].append(number)
        used = np.zeros(len(offsets), dtype=bool)
        for tag, (records, steps, values) in columns.items():
            used[records] = True
            chunks.setdefault(tag, []).append((steps, values, np.full(len(steps), index, dtype=np.int32)))
        _check_data_crcs(buf, offsets[used], lengths[used], path)
    curves = {
        tag: Curve(
            np.concatenate([np.asarray(c[0], dtype=np.int64) for c in parts]),
            np.concatenate([np.asarray(c[1], dtype=float) for c in parts]),
            np.concatenate([c[2] for c in parts]),
        )
        for tag, parts in chunks.items()
    }
    seen = tuple(sorted(tag for tag, scalar in is_scalar.items() if scalar))
    return RunLog(name, "tensorboard", tuple(str(p) for p in paths), curves, seen, {"truncated_records": truncated})


def _scalar(value) -> float | None:
    """The number held by one summary value, or None when it is not a scalar."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return value.simple_value
    if kind != "tensor":
        return None
    tensor = value.tensor
    if tensor.dtype not in _FLOAT_DTYPES or len(tensor.tensor_shape.dim) != 0:
        return None
    if tensor.float_val:
        return tensor.float_val[0]
    if tensor.double_val:
        return tensor.double_val[0]
    if tensor.tensor_content:
        return float(np.frombuffer(tensor.tensor_content, dtype=_FLOAT_DTYPES[tensor.dtype])[0])
    if tensor.half_val:  # float16 bits stored in an int32 field
        return float(np.array(tensor.half_val[0], dtype=np.uint16).view(np.float16))
    return None


def _frames(buf: bytes, path) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets and data lengths of the complete records; 1 when a truncated record ends the file."""
    offsets, lengths = [], []
    pos, size = 0, len(buf)
    unpack = struct.Struct("<Q").unpack_from
    while pos + _HEADER + _CRC <= size:
        (length,) = unpack(buf, pos)
        end = pos + _HEADER + _CRC + length + _CRC
        if end > size:
            break
        offsets.append(pos)
        lengths.append(length)
        pos = end
    offsets_arr = np.asarray(offsets, dtype=np.int64)
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    # every header read, the one of a truncated last record included, must match its
    # checksum: a corrupt length would otherwise pass for a truncated file
    headers = offsets_arr if pos + _HEADER + _CRC > size else np.append(offsets_arr, pos)
    data = np.frombuffer(buf, dtype=np.uint8)
    expected = _uint32_at(data, headers + _HEADER)
    bad = np.flatnonzero(masked_crc32c(data, headers, np.full(len(headers), _HEADER)) != expected)
    if len(bad):
        raise DataError(f"{path}: the record header at byte {int(headers[bad[0]])} fails its CRC check: not an event file, or corrupt")
    return offsets_arr, lengths_arr, int(pos != size)


def _check_data_crcs(buf: bytes, offsets: np.ndarray, lengths: np.ndarray, path) -> None:
    if not len(offsets):
        return
    data = np.frombuffer(buf, dtype=np.uint8)
    starts = offsets + _HEADER + _CRC
    bad = np.flatnonzero(masked_crc32c(data, starts, lengths) != _uint32_at(data, starts + lengths))
    if len(bad):
        raise DataError(f"{path}: the record at byte {int(offsets[bad[0]])} fails its CRC check: the file is corrupt")


def _uint32_at(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Little-endian uint32 values at (unaligned) byte positions."""
    b = data[positions[:, None] + np.arange(4)].astype(np.uint32)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


@functools.cache
def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_CRC32C_POLY), table >> 1)
    return table


def masked_crc32c(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC-32C of many byte ranges of ``data`` at once.

    The ranges advance together one byte per NumPy step; sorted longest first, the
    ranges still running at step j are a prefix, so each step costs only the live ones.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    s, n = starts[order], lengths[order]
    crc = np.full(len(s), 0xFFFFFFFF, dtype=np.uint32)
    table = _crc_table()
    live = len(s) - np.searchsorted(n[::-1], np.arange(int(n.max()) if len(n) else 0), side="right")
    for j, k in enumerate(live.tolist()):
        c = crc[:k]
        crc[:k] = table[(c ^ data[s[:k] + j]) & 0xFF] ^ (c >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    masked = ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)
    out = np.empty_like(masked)
    out[order] = masked
    return out
