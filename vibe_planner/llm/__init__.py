"""The ``llm`` node handler and its session over any OpenAI-compatible endpoint.

The LLM *planner* lives with the other planners, in `vibe_planner.planning`.
"""

from ._config import LLMConfig as LLMConfig
from ._handler import LLMNodeHandler as LLMNodeHandler
from ._session import LLMRequestError as LLMRequestError
from ._session import LLMSession as LLMSession

__all__ = ["LLMConfig", "LLMNodeHandler", "LLMRequestError", "LLMSession"]
