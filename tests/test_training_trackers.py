"""TensorBoard event files read back with protobuf's own parser; W&B only when installed and logged in."""

from __future__ import annotations

import struct
import sys
import types
from pathlib import Path

import pytest

from helpers.training import trackers


def _event_class():
    """``Event``/``Summary`` message classes built from tensorboard's .proto field numbers (event.proto,
    summary.proto), so the file is parsed by the protobuf library, not by our own encoder's mirror image."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tb_event_test.proto", package="tbtest", syntax="proto3")

    def message(name, fields):
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Image", [("height", 1, F.TYPE_INT32, opt, ""), ("width", 2, F.TYPE_INT32, opt, ""),
                      ("colorspace", 3, F.TYPE_INT32, opt, ""), ("encoded_image_string", 4, F.TYPE_BYTES, opt, "")])
    message("Value", [("tag", 1, F.TYPE_STRING, opt, ""), ("simple_value", 2, F.TYPE_FLOAT, opt, ""),
                      ("image", 4, F.TYPE_MESSAGE, opt, ".tbtest.Image")])
    message("Summary", [("value", 1, F.TYPE_MESSAGE, rep, ".tbtest.Value")])
    message("Event", [("wall_time", 1, F.TYPE_DOUBLE, opt, ""), ("step", 2, F.TYPE_INT64, opt, ""),
                      ("file_version", 3, F.TYPE_STRING, opt, ""), ("summary", 5, F.TYPE_MESSAGE, opt,
                                                                     ".tbtest.Summary")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def read_events(path: Path) -> list[dict]:
    """Every record of an event file, CRCs checked: {"step", "wall_time", "file_version", "scalars", "images"}."""
    Event = _event_class()
    data, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert trackers._masked(trackers.crc32c(data[pos:pos + 8])) == length_crc
        assert trackers._masked(trackers.crc32c(payload)) == payload_crc
        event = Event.FromString(payload)
        out.append({"step": event.step, "wall_time": event.wall_time, "file_version": event.file_version,
                    "scalars": {v.tag: v.simple_value for v in event.summary.value if not v.HasField("image")},
                    "images": {v.tag: v.image for v in event.summary.value if v.HasField("image")}})
        pos += 16 + length
    return out


def test_crc32c_known_answer():
    assert trackers.crc32c(b"123456789") == 0xE3069283  # RFC 3720 §B.4 check value
    assert trackers.crc32c(b"") == 0


def test_event_file_holds_scalars_and_images(tmp_path):
    from PIL import Image

    writer = trackers.EventFileWriter(tmp_path / "tb")
    writer.scalars(3, {"loss": 0.25, "lr/unet": 1e-6})
    writer.image(4, "samples", Image.new("RGB", (24, 16), (255, 0, 0)))
    writer.close()
    assert writer.path.name.startswith("events.out.tfevents.")
    events = read_events(writer.path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert events[1]["step"] == 3 and events[1]["scalars"] == pytest.approx({"loss": 0.25, "lr/unet": 1e-6})
    image = events[2]["images"]["samples"]
    assert (events[2]["step"], image.width, image.height, image.colorspace) == (4, 24, 16, 3)
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_step_records_become_flat_metrics():
    record = {"step": 7, "epoch": 1, "loss": 0.5, "lr": 1e-6, "lrs": {"unet": 1e-6, "te1": 1e-7}, "time": 1.0,
              "note": "x", "flag": True}
    assert trackers.numeric_metrics(record) == {"epoch": 1.0, "loss": 0.5, "lr": 1e-6, "lr/unet": 1e-6,
                                                "lr/te1": 1e-7}


def test_wandb_off_missing_or_logged_out_never_stops_a_run(tmp_path, monkeypatch):
    found, warnings = trackers.open_trackers(False, False, "p", tmp_path, {})
    assert found == [] and warnings == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    found, warnings = trackers.open_trackers(True, True, "p", tmp_path, {})
    assert len(found) == 1 and "not installed" in warnings[0]
    found[0].close()
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    found, warnings = trackers.open_trackers(False, True, "p", tmp_path, {})
    assert found == [] and "wandb login" in warnings[0]


def test_wandb_logs_every_step_when_logged_in(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, metrics, step):
            calls.append((step, metrics))

        def finish(self):
            calls.append("finished")

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(kwargs) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    found, warnings = trackers.open_trackers(False, True, "proj", tmp_path / "run-a", {"epochs": 3})
    assert warnings == [] and isinstance(found[0], trackers.WandbTracker)
    from helpers.training.progress import RunMonitor

    monitor = RunMonitor(tmp_path / "run-a", show_bar=False)
    monitor.trackers = found
    monitor.step({"step": 1, "epoch": 1, "loss": 0.5, "lrs": {"unet": 1e-6}})
    monitor.close()
    init = calls[0]
    assert (init["project"], init["name"], init["resume"], init["config"]) == ("proj", "run-a", "allow", {"epochs": 3})
    assert calls[1] == (1, {"epoch": 1.0, "loss": 0.5, "lr/unet": 1e-6}) and calls[2] == "finished"
