"""The tasks one server serves, each with its own ``RoundEngine`` (runs, model, history,
checkpoints), side by side on one store and one set of connections.

The default task answers today's task-less endpoints (``/api/rounds``, ``/api/status``,
...) and a ``hello`` that names no task. Tasks created at run time (``POST /api/tasks``)
or loaded from ``--task-file`` are kept in the store and served again after a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.data import Dataset
from ..core.tasks import Task
from .coordinator import Coordinator
from .engine import RoundEngine
from .store import Store

__all__ = ["MODEL_FIELDS", "TaskInUse", "TaskSet", "UnknownTask", "read_task_file"]

log = logging.getLogger("webfl.tasks")

#: The definition fields a model's parameters or a volunteer's parsed data depend on.
MODEL_FIELDS = ("kind", "features", "label", "classes", "width", "height", "channels", "model", "scaling")


class TaskInUse(Exception):
    """A task of that name is served already (or runs, and cannot be changed)."""


class UnknownTask(KeyError):
    """No task of that name is served."""

    def __str__(self) -> str:
        return f"no task named {self.args[0]!r}"


def read_task_file(path: Path) -> list[Task]:
    """The tasks in a JSON file (one definition or a list); ``ValueError`` naming the file and entry."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    entries = document if isinstance(document, list) else [document]
    tasks = []
    for i, entry in enumerate(entries):
        try:
            tasks.append(Task.from_json(entry))
        except ValueError as exc:
            where = f"{path}[{i}]" if isinstance(document, list) else str(path)
            raise ValueError(f"{where}: {exc}") from None
    return tasks


class TaskSet:
    """Name -> engine, in the order tasks were loaded; ``default`` is one of them."""

    def __init__(self, store: Store, coordinator: Coordinator, seed: int, held_out: Callable[[Task], Dataset | None]) -> None:
        """``held_out``: the server's own evaluation data for a task, None for most (they
        are evaluated on the volunteers' devices)."""
        self._store, self._coordinator, self._seed, self._held_out = store, coordinator, seed, held_out
        self._engines: dict[str, RoundEngine] = {}
        self._default: str | None = None
        #: Called on every engine built here, before it serves (a cluster member sets its role).
        self.prepare: Callable[[RoundEngine], None] = lambda engine: None

    def __iter__(self) -> Iterator[RoundEngine]:
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def __contains__(self, name: object) -> bool:
        return name in self._engines

    @property
    def default(self) -> RoundEngine:
        assert self._default is not None, "no task is served"
        return self._engines[self._default]

    def set_default(self, name: str) -> None:
        self.get(name)
        self._default = name

    def get(self, name: str) -> RoundEngine:
        try:
            return self._engines[name]
        except KeyError:
            raise UnknownTask(name) from None

    def add(self, task: Task, *, persist: bool = True) -> RoundEngine:
        """Serve ``task`` (``TaskInUse`` if its name is taken); ``persist`` keeps it across restarts."""
        if task.name in self._engines:
            raise TaskInUse(f"a task named {task.name!r} exists already")
        if persist:
            self._store.save_task(task.name, task.to_json())
        engine = self._build(task)
        self._engines[task.name] = engine
        if self._default is None:
            self._default = task.name
        log.info("serving task %s (%s, model %s)", task.name, task.kind.value, task.model)
        return engine

    async def replace(self, task: Task) -> RoundEngine:
        """Redefine the served task of ``task``'s name (``TaskInUse`` with the reason if it cannot change now).

        Fields no model or parsed data depends on change in place, and the task's
        volunteers are sent the new definition. A change to any of ``MODEL_FIELDS`` gives
        the task a new model at version 0 (a new engine): refused once a round of the
        current model is committed (its history belongs to that definition), and while
        volunteers are connected (their data was checked against the current one).
        """
        engine = self.get(task.name)
        if engine.running:
            raise TaskInUse(f"task {task.name!r} has a run in progress: stop it before changing its definition")
        before, after = engine.task.to_json(), task.to_json()
        changed = [f for f in MODEL_FIELDS if before.get(f) != after.get(f)]
        if not changed:
            await engine.adopt(task)
            log.info("task %s redefined (%s)", task.name, ", ".join(k for k in after if before.get(k) != after[k]) or "unchanged")
            return engine
        what = ", ".join(changed)
        if engine.history:
            raise TaskInUse(
                f"task {task.name!r} has {len(engine.history)} committed round(s) of its model, so its {what} cannot change: "
                "create a new task instead"
            )
        if len(engine.peers):
            raise TaskInUse(
                f"{len(engine.peers)} volunteer(s) are connected to task {task.name!r} with data checked against its current {what}: "
                "change it while none is"
            )
        fresh = self._store.scoped(task.name, task.model)
        if task.model != engine.task.model and (fresh.history() or fresh.latest_checkpoint() is not None):
            raise TaskInUse(f"the store holds a model {task.model} of task {task.name!r} from an earlier definition: create a new task instead")
        # The new engine must not load the old shape's version 0 (same task and model key).
        # A crash between these leaves the old definition, its version 0 made again from
        # the seed: the same parameters.
        engine.store.forget_model()
        self._store.save_task(task.name, after)
        self._engines[task.name] = self._engine(task)
        await engine.close()
        log.info("task %s redefined (%s): a new model %s at version 0", task.name, what, task.model)
        return self._engines[task.name]

    def load(self, given: list[Task], default: str | None) -> None:
        """Serve the stored tasks, then ``given`` (this start's ``--task-file`` tasks and
        ``--task``: a given definition replaces a stored one of its name, since the operator
        changed it and nothing runs yet). The default is ``default``, else the first given."""
        names = {t.name for t in given}
        for definition in self._store.task_definitions():
            try:
                task = Task.from_json(definition)
            except ValueError as exc:
                log.error("stored task %r no longer validates (%s); not served", definition.get("name"), exc)
                continue
            if task.name not in names:
                self.add(task, persist=False)
        for task in given:
            self.add(task)
        if default or given:
            self.set_default(default or given[0].name)

    def round_in_flight(self) -> bool:
        """A round of any task served here is in flight (``RoundEngine.round_in_flight``)."""
        return any(engine.round_in_flight() for engine in self._engines.values())

    def _engine(self, task: Task) -> RoundEngine:
        engine = RoundEngine(task, self._store, self._coordinator, self._held_out(task), self._seed)
        # The tasks share one event loop: one task's notices hold back for another's round too.
        engine.busy = self.round_in_flight
        return engine

    def _build(self, task: Task) -> RoundEngine:
        engine = self._engine(task)
        self.prepare(engine)
        return engine

    def refresh(self) -> None:
        """Serve the stored tasks not served yet (another cluster member created them)."""
        for definition in self._store.task_definitions():
            if definition.get("name") not in self._engines:
                try:
                    self.add(Task.from_json(definition), persist=False)
                except ValueError as exc:
                    log.error("stored task %r no longer validates (%s); not served", definition.get("name"), exc)

    async def reload(self, names: set[str] | None = None) -> None:
        """Rebuild the engines (of ``names``; all by default) from the store: a cluster's
        leader changed, or committed, and the model, history and runs are the store's now,
        not this member's memory of them."""
        stored = {d.get("name"): d for d in self._store.task_definitions()}
        for name, old in list(self._engines.items()):
            if names is not None and name not in names:
                continue
            await old.step_down()  # never ends a run: the store's runs are the next leader's
            task = old.task
            if name in stored:
                try:
                    task = Task.from_json(stored[name])  # its scaling may have been fixed since
                except ValueError as exc:
                    log.error("stored task %r no longer validates (%s); serving the one loaded", name, exc)
            self._engines[name] = self._build(task)
        self.refresh()

    def resume(self) -> None:
        for engine in self:
            engine.resume()

    async def stop(self) -> None:
        """Shutdown: stop every run and its announcements, and write the evaluations
        reported since the last flush (before the store closes)."""
        for engine in self:
            await engine.close()
            engine.evaluation.flush()
