"""The one typed object that handlers get the server's parts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from ..auth import AdminAuth
from ..config import Settings
from ..coordinator import Coordinator
from ..datasets import DemoShards
from ..engine import RoundEngine
from ..limits import AddressLimits
from ..security import ResumeTokens
from ..store import Store
from ..taskset import TaskSet

if TYPE_CHECKING:
    from ..cluster.member import ClusterMember

__all__ = ["Services", "services", "task_engine"]


@dataclass(frozen=True)
class Services:
    """Built once by the app's lifespan; every handler reads it through ``services()``."""

    settings: Settings
    tasks: TaskSet
    store: Store
    coordinator: Coordinator
    #: MNIST's demo shards for volunteers without data; None when MNIST is not served.
    demo_shards: DemoShards | None
    admin: AdminAuth
    resume_tokens: ResumeTokens
    limits: AddressLimits
    #: This process's membership of a cluster (``--redis``); None: one process.
    cluster: ClusterMember | None = None

    @property
    def engine(self) -> RoundEngine:
        """The default task's engine: what the task-less endpoints and ``hello`` address."""
        return self.tasks.default

    @property
    def browser_origins(self) -> tuple[str, ...]:
        """Origins whose pages may open ``/ws``: this server's own and the embedding sites."""
        return self.settings.public_origins + self.settings.embed_origins


def services(conn: HTTPConnection) -> Services:
    """The running app's services (lifespan state, so each app has its own)."""
    return conn.state.services


def task_engine(conn: HTTPConnection) -> RoundEngine:
    """The engine of the path's ``{task}`` (``UnknownTask`` if none is served), else the default's."""
    svc = services(conn)
    name = conn.path_params.get("task")
    if name is None:
        return svc.engine
    if name not in svc.tasks and svc.cluster is not None:
        svc.tasks.refresh()  # another member may have created it
    return svc.tasks.get(name)
