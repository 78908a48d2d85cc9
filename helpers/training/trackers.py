"""Metrics to outside viewers: TensorBoard event files in the run folder, and Weights & Biases when wanted.

TensorBoard: ``runs/<name>/tensorboard/events.out.tfevents.*`` (the folder Vast's portal TensorBoard and
``tensorboard --logdir runs`` read). ``torch.utils.tensorboard`` needs the ``tensorboard`` package (with grpcio,
werkzeug, ...) only to WRITE a format that is small: TFRecord framing (length, masked CRC-32C, payload, masked
CRC-32C) around ``Event`` protobufs holding scalars or PNG images. ``EventFileWriter`` writes it directly.
Weights & Biases is used only when ``logging.wandb`` is on, the ``wandb`` package is installed and a login
exists; otherwise the run goes on and says why not. Neither is needed for the notebook's own monitor, which
reads ``log.jsonl``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.config import option


@dataclass
class LoggingConfig:
    """Where metrics go besides the run's own log (which the notebook reads)."""

    tensorboard: bool = option(True, help="write TensorBoard event files to runs/<name>/tensorboard (Vast's "
                               "TensorBoard and `tensorboard --logdir runs` show them)")
    wandb: bool = option(False, help="also log to Weights & Biases (needs `pip install wandb` and `wandb "
                         "login`; the run goes on without it)")
    wandb_project: str = option("tunebook", help="Weights & Biases project name", group="advanced")


# ---------------------------------------------------------------- TFRecord framing


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses (RFC 3720 §B.4; crc32c(b"123456789") = 0xE3069283)."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (tensorflow/core/lib/hash/crc32c.h)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One record: uint64 length, masked CRC of the length, payload, masked CRC of the payload (little endian)."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked(crc32c(length))) + payload + struct.pack("<I", _masked(crc32c(payload)))


# ---------------------------------------------------------------- protobuf encoding (tensorboard/compat/proto)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def event_bytes(wall_time: float, step: int, *, file_version: str | None = None,
                values: list[bytes] | None = None) -> bytes:
    """An ``Event``: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5 (``Summary``,
    whose repeated ``value`` = 1)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if values is not None:
        out += _field(5, 2, b"".join(_field(1, 2, v) for v in values))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value``: tag = 1, simple_value = 2 (float)."""
    return _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def image_value(tag: str, png: bytes, width: int, height: int) -> bytes:
    """A ``Summary.Value`` with ``image`` = 4: ``Summary.Image`` height = 1, width = 2, colorspace = 3 (3 = RGB),
    encoded_image_string = 4."""
    image = _field(1, 0, _varint(height)) + _field(2, 0, _varint(width)) + _field(3, 0, _varint(3)) + \
        _field(4, 2, png)
    return _field(1, 2, tag.encode()) + _field(4, 2, image)


class EventFileWriter:
    """Appends scalars and images to one TensorBoard event file (flushed per call: a killed run keeps them)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._fh = open(self.path, "ab")
        self._write(event_bytes(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._fh.write(tfrecord(event))
        self._fh.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(event_bytes(time.time(), step, values=[scalar_value(k, float(v)) for k, v in values.items()]))

    def image(self, step: int, tag: str, image) -> None:
        """A PIL image (e.g. a sample grid), stored as PNG."""
        import io

        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        self._write(event_bytes(time.time(), step, values=[image_value(tag, buf.getvalue(), *image.size)]))

    def close(self) -> None:
        self._fh.close()


# ---------------------------------------------------------------- trackers


def numeric_metrics(record: dict) -> dict[str, float]:
    """Scalars of a step record for a tracker: numbers as they are, dicts flattened (``lrs`` -> ``lr/unet``)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            prefix = "lr" if key == "lrs" else key
            out.update({f"{prefix}/{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "time"):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    def __init__(self, folder: Path):
        self.writer = EventFileWriter(folder)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.writer.scalars(step, metrics)

    def log_image(self, step: int, tag: str, image) -> None:
        self.writer.image(step, tag, image)

    def close(self) -> None:
        self.writer.close()


def wandb_logged_in() -> bool:
    """Whether a W&B API key is configured (environment or ~/.netrc); the key itself is never read out."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """Logs to a W&B run named after the run folder (a resumed run continues the same W&B run)."""

    def __init__(self, run_root: Path, project: str, config: dict):
        import wandb

        run_id = "tunebook-" + "".join(c if c.isalnum() else "-" for c in Path(run_root).resolve().as_posix())[-54:]
        self.run = wandb.init(project=project, name=Path(run_root).name, id=run_id, resume="allow",
                              dir=str(run_root), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, step: int, tag: str, image) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(tensorboard: bool, wandb: bool, wandb_project: str, run_root: Path,
                  config: dict) -> tuple[list, list[str]]:
    """(trackers, warnings): TensorBoard when on; W&B when on, installed and logged in, else a warning."""
    trackers, warnings = [], []
    if tensorboard:
        trackers.append(TensorBoardTracker(Path(run_root) / "tensorboard"))
    if wandb:
        try:
            import wandb as _wandb  # noqa: F401
        except ImportError:
            warnings.append("logging.wandb is on but the wandb package is not installed (pip install wandb): "
                            "training goes on without it")
            return trackers, warnings
        if not wandb_logged_in():
            warnings.append("logging.wandb is on but there is no W&B login (run `wandb login` or set "
                            "WANDB_API_KEY): training goes on without it")
            return trackers, warnings
        try:
            trackers.append(WandbTracker(run_root, wandb_project, config))
        except Exception as exc:  # a W&B outage must not stop a paid GPU run
            warnings.append(f"Weights & Biases did not start ({type(exc).__name__}: {exc}): training goes on "
                            "without it")
    return trackers, warnings
