"""The one typed object that handlers get the server's parts from."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from ..auth import AdminAuth
from ..config import Settings
from ..coordinator import Coordinator
from ..datasets import DemoShards
from ..engine import RoundEngine
from ..limits import AddressLimits
from ..security import ResumeTokens
from ..store import Store

__all__ = ["Services", "services"]


@dataclass(frozen=True)
class Services:
    """Built once by the app's lifespan; every handler reads it through ``services()``."""

    settings: Settings
    engine: RoundEngine
    store: Store
    coordinator: Coordinator
    demo_shards: DemoShards
    admin: AdminAuth
    resume_tokens: ResumeTokens
    limits: AddressLimits

    @property
    def browser_origins(self) -> tuple[str, ...]:
        """Origins whose pages may open ``/ws``: this server's own and the embedding sites."""
        return self.settings.public_origins + self.settings.embed_origins


def services(conn: HTTPConnection) -> Services:
    """The running app's services (lifespan state, so each app has its own)."""
    return conn.state.services
