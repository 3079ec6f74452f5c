"""The orchestration service: an HTTP API with live events and a dashboard (extra ``server``).

``vibe-planner serve`` runs it; `create_app` returns it as an ASGI app; `create_router` gives
its routes to include in an app of your own, beside a `PlanService` opened in its lifespan.
"""

from ._app import create_app as create_app
from ._app import install_error_handlers as install_error_handlers
from ._routes import create_router as create_router
from ._security import BodySizeLimit as BodySizeLimit
from ._service import PlanService as PlanService

__all__ = ["BodySizeLimit", "PlanService", "create_app", "create_router", "install_error_handlers"]
