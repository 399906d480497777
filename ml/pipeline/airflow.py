"""Airflow from Python: run a DAG in-process (``dag.test``) or serve the Airflow and MLflow UIs."""

from __future__ import annotations

import _thread
import ast
import fcntl
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

from ml.runtime import PROGRESS_LOGGER
from ml.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

# The DAGs' start_date: Airflow creates no task for a logical date before it, so a run of an earlier day (`rekindle
# run --date`, a trigger from the UI) would end "success" at once having run nothing. catchup=False keeps the
# scheduler from backfilling from it.
FIRST_RUN_DATE = datetime(2000, 1, 1)


# The DAGs' default_args. Every task is idempotent (loading skips files already loaded, dbt and publishing replace
# their own output, training reuses a model fitted from the same recipe and data), so a task that dies with its
# worker or loses the warehouse is retried: by default after 2-4, 4-8, then 8-16 minutes (Airflow adds jitter of up
# to one base delay), then it fails. A gate's verdict on the data does not change on retry; it only comes later.
def task_retries(settings: Settings) -> dict:
    return {
        "retries": 3,
        "retry_delay": timedelta(seconds=settings.task_retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise LookupError(f"no DAG {dag_id!r} in {PROJECT_ROOT / 'dags'}")
    return dag


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    state: str
    seconds: float | None
    started: datetime | None = None
    ended: datetime | None = None


def tasks_span_seconds(tasks: list[TaskOutcome]) -> float | None:
    """Wall-clock seconds from the first task's start to the last task's end: the DAG run without the set-up before
    it (the warehouse, Airflow's metadata database, parsing the DAG). None if no task ran."""
    starts = [t.started for t in tasks if t.started]
    ends = [t.ended for t in tasks if t.ended]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _state(value) -> str:
    return str(getattr(value, "value", value))


class RunInProgress(RuntimeError):
    """Another run of the DAG is in progress on this home: a second at once would race it on the warehouse."""


@contextmanager
def in_process_run_lock(airflow_home: Path, dag_id: str, run_date: date) -> Iterator[None]:
    """Hold the DAG's in-process run lock for this home while the block runs, or raise ``RunInProgress`` naming who
    holds it. ``dag.test`` deletes any run of its logical date first, so a second ``rekindle run`` would pull the
    first's run from under it, and both would write the warehouse at once. The operating system drops the lock when
    its process ends, however it ends."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    with (airflow_home / f"{dag_id}.run.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RunInProgress(
                f"another `rekindle run` of {dag_id} is in progress on this home ({lock.read().strip()}): "
                "wait for it to end"
            ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()}, date {run_date}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        lock.flush()
        yield


def refuse_while_the_scheduler_runs(dag_id: str, celery_metadata_url: str | None) -> None:
    """Raise ``RunInProgress`` when a live Airflow scheduler has a run of the DAG queued or running (the DAG runs one
    day at a time): ``rekindle ui``'s, whose metadata is this process's Airflow database, or, given its metadata's
    URL (``cluster.existing_metadata_url``), ``rekindle ui --executor celery``'s. A run left running by a scheduler
    that is no longer alive does not count: nothing is running it."""
    stores = {"rekindle ui": None}
    if celery_metadata_url is not None:
        stores["rekindle ui --executor celery"] = celery_metadata_url
    for name, url in stores.items():
        with _metadata_session(url) as session:
            dates = _scheduled_runs_in_progress(session, dag_id)
        if dates is not None:
            raise RunInProgress(
                f"the Airflow scheduler of `{name}` is running {dag_id} for {', '.join(dates) or 'a run'}: wait for "
                "it to end in the Airflow UI, or stop that scheduler first"
            )


@contextmanager
def _metadata_session(url: str | None):
    """A session on Airflow's metadata database: this process's (``url`` None) or the one at ``url``."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    if url is None:
        from airflow.utils.session import create_session

        with create_session() as session:
            yield session
        return
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def _scheduled_runs_in_progress(session, dag_id: str) -> list[str] | None:
    """The logical dates of the DAG's queued or running runs that a live scheduler (not ``dag.test``) runs; None
    when there are none or no scheduler is alive."""
    from airflow.jobs.job import most_recent_job
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select

    scheduler = most_recent_job("SchedulerJob", session=session)
    if scheduler is None or not scheduler.is_alive():
        return None
    active = session.scalars(
        select(DagRun.logical_date).where(
            DagRun.dag_id == dag_id,
            DagRun.state.in_([DagRunState.RUNNING, DagRunState.QUEUED]),
            DagRun.triggered_by != DagRunTriggeredByType.TEST,
        )
    ).all()
    return sorted(f"{logical_date:%Y-%m-%d}" for logical_date in active if logical_date) if active else None


def run_dag_in_process(dag_id: str, run_date: date, conf: dict | None = None) -> tuple[str, list[TaskOutcome]]:
    """Run every task of the DAG for ``run_date`` in this process; returns the run state and each task's outcome.

    Without retries: someone is watching an in-process run, and a failed task fails it at once (``dag.test``
    would otherwise sit out ``task_retries``' back-off); running the same day again is the retry."""
    dag = load_dag(dag_id)
    for task in dag.tasks:
        task.retries = 0
    logical_date = datetime(run_date.year, run_date.month, run_date.day, tzinfo=UTC)
    with stopped_by_signals(dag.test):
        dag_run = dag.test(logical_date=logical_date, run_conf=conf)
    outcomes = []
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0)):
        seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        outcomes.append(TaskOutcome(ti.task_id, _state(ti.state), seconds, ti.start_date, ti.end_date))
    return _state(dag_run.state), outcomes


@contextmanager
def stopped_by_signals(stoppable: Callable, poll_seconds: float = 0.2) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM stops ``stoppable`` (called in the block) with ``KeyboardInterrupt``.

    ``dag.test`` runs each task inside an ``except BaseException`` that turns the interrupt into that task's failure
    and goes on with the tasks that do not depend on it, and it gives every task a SIGTERM handler of its own that
    does nothing for a Python task. So the signals are also read from Python's wakeup file descriptor, and the main
    thread is interrupted again while it is still inside ``stoppable``; an interrupt that arrives after it has
    returned is dropped. In the main thread only (where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    code = getattr(stoppable, "__func__", stoppable).__code__

    def interrupt(signum, frame) -> None:
        while frame is not None:
            if frame.f_code is code:
                raise KeyboardInterrupt
            frame = frame.f_back

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    stopping = {signal.SIGINT, signal.SIGTERM}
    previous = {sig: signal.signal(sig, interrupt) for sig in stopping}
    ended = threading.Event()

    def interrupt_until_ended() -> None:
        received = False
        while not ended.is_set():
            if select.select([read_fd], [], [], poll_seconds)[0]:
                received = received or any(number in stopping for number in os.read(read_fd, 512))
            if received and not ended.is_set():
                _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_until_ended, name="stopped-by-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        # An interrupt the watcher sent before it stopped reaches `interrupt` here, outside `stoppable`: dropped.
        watcher.join()
        signal.set_wakeup_fd(previous_wakeup_fd)
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, which cannot be restored from here
                signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)


_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)(?: map_index=(-?\d+))?")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)(?: map_index=(-?\d+))?")
_TASK_STATE = re.compile(r"\bnew_state=(\w+)")
# A mapped task's step records itself as "<task_id>[<map_index>]" (score_shard[0]), as the view names it.
_STEP_SUMMARY = re.compile(r"\] ([\w\[\]]+) finished in [\d.]+s: (\{.*\}) \[ml\.pipeline\.tasks\]")
_PROGRESS = re.compile(r"\]\s+(.*?)\s+\[" + re.escape(PROGRESS_LOGGER) + r"\]")
# The last line of a traceback: what the failed task raised, and why.
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit): \S.*")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?)\s")


def _seconds_of(line: str) -> float:
    """The line's own timestamp as epoch seconds (Airflow's task logs carry one), else now."""
    if match := _TIMESTAMP.match(line):
        try:
            return datetime.fromisoformat(match.group(1)).timestamp()
        except ValueError:
            pass
    return time.time()


@dataclass
class _Group:
    name: str
    seconds: float = 0.0
    states: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)


class ProgressView:
    """Turns the DAG's full log into a short view: each task as it ends with its state, seconds and one key
    figure, or what it raised if it failed (a task group's tasks, such as the dbt models and tests, as one line),
    and the lines the steps log to ``PROGRESS_LOGGER`` (rows per second, users scored of total).
    ``figure(step, summary)`` picks the key figure from the summary a step logs as it finishes; ``verbose`` also
    echoes every line of the log."""

    def __init__(
        self, console: TextIO, figure: Callable[[str, dict], str] | None = None, verbose: bool = False
    ) -> None:
        self.console = console
        self.figure = figure
        self.verbose = verbose
        self.started: dict[str, float] = {}
        self.state: str | None = None
        self.summaries: dict[str, dict] = {}
        self.group: _Group | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def feed(self, line: str) -> None:
        if self.verbose:
            self._write(line)
        if match := _TASK_START.search(line):
            task_id = _task_name(*match.groups())
            if self.group and not task_id.startswith(self.group.name + "."):
                self.close_group()
            self.started[task_id] = _seconds_of(line)
            self.state = None
            self.error = None
        elif match := _TASK_END.search(line):
            task_id = _task_name(*match.groups())
            ended = _seconds_of(line)
            seconds = max(0.0, ended - self.started.pop(task_id, ended))
            state = self.state or "ended"
            if "." in task_id:
                name, _, member = task_id.partition(".")
                if not self.group or self.group.name != name:
                    self.close_group()
                    self.group = _Group(name)
                self.group.seconds += seconds
                self.group.states[state] += 1
                self.group.kinds[_kind(member)] += 1
            else:
                figure = self.error if state == "failed" and self.error else self._figure(task_id)
                self._task_line(task_id, state, seconds, figure)
        elif match := _TASK_STATE.search(line):
            self.state = match.group(1).lower()
        elif match := _STEP_SUMMARY.search(line):
            try:
                self.summaries[match.group(1)] = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                pass
        elif match := _PROGRESS.search(line):
            if not self.verbose:
                self._write(f"    {match.group(1)}")
        elif match := _EXCEPTION.match(line):
            self.error = match.group(0).strip()

    def close_group(self) -> None:
        group, self.group = self.group, None
        if group:
            tasks = sum(group.states.values())
            state = "success" if set(group.states) == {"success"} else _counts(group.states)
            self._task_line(f"{group.name} ({tasks} tasks)", state, group.seconds, _counts(group.kinds))

    def say(self, text: str) -> None:
        """A line of our own on the terminal, among the task lines."""
        self._write(text)

    def _figure(self, task_id: str) -> str:
        summary = self.summaries.pop(task_id, None)
        if self.figure is None or summary is None:
            return ""
        try:
            return self.figure(task_id, summary)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return ""

    def _task_line(self, name: str, state: str, seconds: float, figure: str) -> None:
        self._write(f"  {name:<30} {state:<8} {seconds:6.1f}s  {figure}".rstrip())

    def _write(self, text: str) -> None:
        with self._lock:
            self.console.write(text + "\n")
            self.console.flush()


def _task_name(task_id: str, map_index: str | None) -> str:
    """A mapped task instance as ``task_id[map_index]`` (``score_shard[2]``), any other task as its id."""
    return task_id if map_index in (None, "-1") else f"{task_id}[{map_index}]"


def _kind(member: str) -> str:
    """What a Cosmos task does, from its id: ``stg_users_model_build`` builds a model, ``..._test`` tests."""
    if member.endswith("_test") or member.endswith(".test"):
        return "tests"
    if member.endswith("_build") or member.endswith("_run") or member.endswith(".run"):
        return "models"
    return "tasks"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{count} {name}" for name, count in counter.most_common())


@contextmanager
def logs_to_file(
    path: Path, figure: Callable[[str, dict], str] | None = None, verbose: bool = False
) -> Iterator[ProgressView]:
    """Send everything this process and its subprocesses print (Airflow, dbt, warnings, our loggers) to
    ``path``; show a ProgressView on the terminal meanwhile (``verbose``: the whole log as well). Redirects
    the file descriptors, so output of libraries that hold on to the original streams is captured too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    view = ProgressView(console, figure, verbose)
    done = threading.Event()
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        follower = threading.Thread(target=_follow, args=(path, log.tell(), view, done), daemon=True)
        follower.start()
        try:
            yield view
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            done.set()
            follower.join()
            view.close_group()
            console.close()


def _follow(path: Path, offset: int, view: ProgressView, done: threading.Event) -> None:
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        pending = ""
        while True:
            finished = done.is_set()
            chunk = log.read()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                view.feed(line)
            if finished and not chunk:
                return
            if not chunk:
                time.sleep(0.2)


# Ctrl-C on `rekindle ui`: every process it started gets SIGTERM, then SIGKILL after this grace period.
STOP_GRACE_SECONDS = 5.0


def serve_uis(settings: Settings, warehouse_url: str, airflow_port: int, mlflow_port: int) -> int:
    """``airflow standalone`` plus ``mlflow ui`` on localhost until Ctrl-C (SIGINT) or SIGTERM, then stop both
    with all their children within ``STOP_GRACE_SECONDS`` and a little. Each runs in its own session, so the
    terminal's Ctrl-C reaches only this process, which then signals each whole process group."""
    from ml.pipeline.tracking import artifact_root, configure, tracking_uri

    configure(settings, warehouse_url)
    env = dict(
        os.environ,
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(airflow_port),
        # The scheduler's workers reach the execution API here (Airflow's default assumes port 8080).
        AIRFLOW__API__BASE_URL=f"http://localhost:{airflow_port}",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
    )
    mlflow_command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--backend-store-uri",
        tracking_uri(warehouse_url),
        "--default-artifact-root",
        artifact_root(settings),
    ]

    def start(processes: dict[str, subprocess.Popen]) -> None:
        processes["Airflow"] = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"], env=env, start_new_session=True
        )
        processes["MLflow"] = subprocess.Popen(mlflow_command, env=env, start_new_session=True)

    password_file = settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    return supervise(
        start,
        f"Airflow UI: http://localhost:{airflow_port}  (user 'admin'; password printed by Airflow below and kept "
        f"in {password_file})\nMLflow UI:  http://localhost:{mlflow_port}\nCtrl-C stops both.",
    )


def supervise(start: Callable[[dict[str, subprocess.Popen]], None], ready: str) -> int:
    """Run the processes ``start`` adds to its dict (each in a session of its own, by name) and print ``ready``;
    on Ctrl-C (SIGINT) or SIGTERM, or when one of them exits, stop them all with their children within
    ``STOP_GRACE_SECONDS`` and a little. Returns 0, or the status of the process that exited first."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes: dict[str, subprocess.Popen] = {}
    try:
        start(processes)
        print(ready, flush=True)
        while not stop.wait(0.5):
            for name, process in processes.items():
                if process.poll() is not None:
                    log.warning("%s exited with status %s; stopping the rest", name, process.returncode)
                    return process.returncode or 1
        return 0
    finally:
        signalled = stop_process_groups(list(processes.values()), STOP_GRACE_SECONDS)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if processes:
            print(f"stopped {', '.join(processes)} ({signalled} processes)", flush=True)


def stop_process_groups(processes: list[subprocess.Popen], grace_seconds: float) -> int:
    """SIGTERM each process's group (and any descendant that left it), wait up to ``grace_seconds`` for them
    to exit, SIGKILL whatever is left, reap the direct children; returns how many processes were signalled."""
    tree = {p.pid for p in processes} | {pid for p in processes for pid in _descendants(p.pid)}
    groups = {p.pid for p in processes}  # start_new_session: each process leads its own group
    _signal_all(groups, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        for p in processes:
            p.poll()
        time.sleep(0.1)
    _signal_all(groups, tree, signal.SIGKILL)
    for p in processes:
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            log.warning("process %s did not exit after SIGKILL", p.pid)
    return len(tree)


def _signal_all(groups: set[int], pids: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for pid in pids:
        if _alive(pid):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (each process's parent is field 4 of its stat line)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, waiting to be reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
