"""LLM planning and the ``llm`` node handler over any OpenAI-compatible endpoint."""

from ._config import LLMConfig as LLMConfig
from ._handler import LLMNodeHandler as LLMNodeHandler
from ._planner import LLMPlanner as LLMPlanner
from ._session import LLMRequestError as LLMRequestError
from ._session import LLMSession as LLMSession

__all__ = ["LLMConfig", "LLMNodeHandler", "LLMPlanner", "LLMRequestError", "LLMSession"]
