"""The cost ledger: paid time per stage on the rented machine, and what it cost at the price you entered.

``<workspace>/ledger.jsonl`` (append-only) records when setup ran, the price per hour, and every stage's start and
end (setup, downloads, captioning, training, extraction, evaluation, upload); a stage running in a process
beats a heartbeat into ``.ledger-heartbeat.json`` every minute, so a stage whose process was killed (a spot
pause, an out-of-memory kill) still ends where its last heartbeat was. Time is grouped by *instance session*:
one start of the container (the start time of PID 1), because a stopped or paused instance does not bill its GPU.
A session is paid from the instance's start (when setup first ran in it, at most ``SETUP_LOOKBACK`` earlier; else
from setup) to its last sign of life (now, for the session this runs in); what no stage covered is idle time.

``stage(where, name)`` is the one call a stage makes (``where``: any path in the workspace; outside a workspace
it records nothing); ``cost_summary(root)`` and ``format_summary`` read it back; ``run_cost_line`` is the sentence
a run's summary and its model card quote.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from helpers.changes import write_text_atomic

LEDGER = "ledger.jsonl"
HEARTBEAT = ".ledger-heartbeat.json"
MARKER = "workspace.toml"
STAGES = ("setup", "downloads", "captioning", "training", "extraction", "evaluation", "upload")
SETUP_LOOKBACK = 6 * 3600  # an instance started longer before setup than this was not rented for this job
BEAT_S = 60.0
_LOCK = threading.Lock()


def find_workspace_root(where: str | os.PathLike | None) -> Path | None:
    """The workspace (folder with ``workspace.toml``) that holds ``where``, or None."""
    if not where:
        return None
    path = Path(where).expanduser().resolve()
    for folder in (path, *path.parents):
        if (folder / MARKER).is_file():
            return folder
    return None


def instance_started() -> float | None:
    """When this container (its PID 1) started, from /proc: the moment the rented instance began to bill."""
    try:
        fields = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, in clock ticks after boot (proc(5), field 22)
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def instance_id() -> str:
    started = instance_started()
    return f"{socket.gethostname()}@{int(started) if started else 0}"


def _append(root: Path, record: dict) -> None:
    record = {**record, "time": record.get("time", time.time()), "instance": instance_id()}
    with _LOCK, open(root / LEDGER, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    _beat(root)


def _beat(root: Path) -> None:
    """The instance was alive now (read when a stage or session has no end)."""
    path = root / HEARTBEAT
    try:
        beats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        beats = {}
    beats[instance_id()] = time.time()
    write_text_atomic(path, json.dumps(beats))


def read_ledger(root: Path) -> list[dict]:
    try:
        lines = (root / LEDGER).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by a kill
            continue
    return out


def mark_setup(where: str | os.PathLike, price_per_hour: float | None = None) -> None:
    """Setup ran (00_setup, ``python -m helpers.ledger setup``): the ledger starts counting from its first time."""
    root = find_workspace_root(where)
    if root is None:
        return
    _append(root, {"event": "setup", "instance_started": instance_started()})
    if price_per_hour:
        set_price(root, price_per_hour)


def set_price(where: str | os.PathLike, per_hour: float) -> None:
    root = find_workspace_root(where)
    if root is not None and per_hour and per_hour > 0:
        _append(root, {"event": "price", "per_hour": float(per_hour)})


@contextlib.contextmanager
def stage(where: str | os.PathLike | None, name: str, detail: str = ""):
    """Record ``name`` from now until the block ends (or, if the process dies, its last heartbeat)."""
    root = find_workspace_root(where)
    if root is None:
        yield
        return
    key = uuid.uuid4().hex[:12]
    _append(root, {"event": "start", "stage": name, "id": key, "detail": detail})
    done = threading.Event()

    def beat():
        while not done.wait(BEAT_S):
            with contextlib.suppress(OSError):
                _beat(root)

    threading.Thread(target=beat, daemon=True, name=f"ledger {name}").start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        with contextlib.suppress(OSError):
            _append(root, {"event": "end", "id": key, "ok": ok})


# ---------------------------------------------------------------- reading it back


def _sessions(records: list[dict], beats: dict[str, float], now: float) -> dict[str, list[float]]:
    """{instance: [paid from, paid until]} for every instance session with records."""
    here, spans = instance_id(), {}
    for r in records:
        span = spans.setdefault(r["instance"], [r["time"], r["time"]])
        span[1] = max(span[1], r["time"])
        started = r.get("instance_started")
        if r["event"] == "setup" and started and 0 <= r["time"] - started <= SETUP_LOOKBACK:
            span[0] = min(span[0], started)  # the meter ran from the instance's start, setup ran in it
    for inst, span in spans.items():
        span[1] = now if inst == here else max(span[1], beats.get(inst, 0.0))
    return spans


def _intervals(records: list[dict], spans: dict[str, list[float]]) -> list[tuple[str, float, float, str, str]]:
    """(stage, from, to, instance, detail): every stage's time, an unfinished one until its session's last sign of
    life; the time from an instance's start to setup counts as setup."""
    ends = {r["id"]: r["time"] for r in records if r["event"] == "end"}
    out = []
    for r in records:
        span = spans[r["instance"]]
        if r["event"] == "start":
            out.append((r["stage"], r["time"], min(ends.get(r["id"], span[1]), span[1]), r["instance"],
                        r.get("detail", "")))
        elif r["event"] == "setup" and span[0] < r["time"]:
            out.append(("setup", span[0], r["time"], r["instance"], ""))
    return out


def _covered(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def cost_summary(where: str | os.PathLike, now: float | None = None, price: float | None = None) -> dict:
    """Paid hours per stage and idle, from the first setup on, with $ at the last price entered (or ``price``).
    Stages that ran at the same time (training in the background while captioning) each count their hours;
    idle is the paid time no stage covered."""
    root = find_workspace_root(where)
    records = read_ledger(root) if root else []
    first = next((r["time"] for r in records if r["event"] == "setup"), None)
    if first is None:
        return {"since": None, "paid_hours": 0.0, "stages": {}, "idle_hours": 0.0, "price_per_hour": price,
                "cost": {}, "total_cost": None}
    records = [r for r in records if r["time"] >= first]
    try:
        beats = json.loads((root / HEARTBEAT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        beats = {}
    spans = _sessions(records, beats, now or time.time())
    intervals = _intervals(records, spans)
    paid = sum(stop - start for start, stop in spans.values())
    covered = sum(_covered([(a, b) for _, a, b, i, _ in intervals if i == inst]) for inst in spans)
    stages: dict[str, float] = {}
    for name, start, stop, *_ in intervals:
        stages[name] = stages.get(name, 0.0) + max(0.0, stop - start) / 3600
    price = price or next((r["per_hour"] for r in reversed(records) if r["event"] == "price"), None)
    hours = {**{k: round(v, 3) for k, v in stages.items()}, "idle": round(max(0.0, paid - covered) / 3600, 3)}
    return {"since": min(span[0] for span in spans.values()), "paid_hours": round(paid / 3600, 3),
            "stages": {k: v for k, v in hours.items() if k != "idle"}, "idle_hours": hours["idle"],
            "sessions": len(spans), "price_per_hour": price,
            "cost": {k: round(v * price, 2) for k, v in hours.items()} if price else {},
            "total_cost": round(paid / 3600 * price, 2) if price else None}


def format_summary(summary: dict) -> str:
    if summary["since"] is None:
        return "cost ledger: nothing recorded yet (it starts when 00_setup runs)"
    price = summary["price_per_hour"]
    head = (f"paid time since {time.strftime('%Y-%m-%d %H:%M', time.localtime(summary['since']))}: "
            f"{summary['paid_hours']:.2f} h in {summary['sessions']} instance session(s)")
    head += f", ≈ {summary['total_cost']:.2f} at {price:g}/h" if price else " (enter your price per hour in 00_setup)"
    rows = sorted(summary["stages"].items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else 99)
    lines = [head] + [f"  {name:<11} {h:7.2f} h" + (f"  {summary['cost'][name]:8.2f}" if price else "")
                      for name, h in rows + [("idle", summary["idle_hours"])]]
    return "\n".join(lines)


def stage_hours(where: str | os.PathLike, name: str, detail: str | None = None, now: float | None = None) -> float:
    """Hours a stage has run (every process of it: a resumed training run counts each start), from the ledger."""
    root = find_workspace_root(where)
    records = read_ledger(root) if root else []
    try:
        beats = json.loads((root / HEARTBEAT).read_text(encoding="utf-8")) if root else {}
    except (OSError, ValueError):
        beats = {}
    intervals = _intervals([r for r in records if r["event"] in ("start", "end")],
                           _sessions(records, beats, now or time.time()))
    return round(sum(b - a for stage_name, a, b, _, d in intervals
                     if stage_name == name and (detail is None or d == detail)) / 3600, 4)


def run_cost_line(where: str | os.PathLike, hours: float) -> str:
    """What a run's summary and its model card say about money: this run's hours, and the job's so far."""
    summary = cost_summary(where)
    price = summary["price_per_hour"]
    line = f"trained in {hours:.2f} h" + (f" (≈ {hours * price:.2f} at {price:g}/h)" if price else "")
    if summary["since"] is not None:
        line += f"; the whole job so far {summary['paid_hours']:.2f} h of paid machine time" + \
            (f" (≈ {summary['total_cost']:.2f})" if price else "")
    return line


def show_ledger(where: str | os.PathLike) -> dict:
    """Notebook 00: the summary as text and, once there are hours, as a bar chart; returns the summary."""
    summary = cost_summary(where)
    print(format_summary(summary))
    if summary["paid_hours"] > 0:
        from IPython.display import display

        from helpers.ui.charts import bar_chart

        labels = list(summary["stages"]) + ["idle"]
        values = list(summary["stages"].values()) + [summary["idle_hours"]]
        display(bar_chart(labels, values, title="paid time by stage", ylabel="hours"))
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["show", "setup", "price"], help="show the summary; mark setup; "
                        "set the price per hour")
    parser.add_argument("value", nargs="?", type=float, help="the price per hour (for 'price', or 'setup')")
    parser.add_argument("--workspace", help="workspace root (default: TUNEBOOK_WORKSPACE or the platform default)")
    args = parser.parse_args(argv)
    from helpers.workspace import Workspace

    root = Workspace.open(args.workspace).root
    if args.command == "setup":
        mark_setup(root, args.value)
    elif args.command == "price":
        set_price(root, args.value or 0)
    print(format_summary(cost_summary(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
