"""vibe_planner: plan a vibe into a DAG, run it concurrently, checkpoint it, resume it."""

from ._events import CheckpointWritten as CheckpointWritten
from ._events import NodeCompleted as NodeCompleted
from ._events import NodeFailed as NodeFailed
from ._events import NodeRetrying as NodeRetrying
from ._events import NodeSkipped as NodeSkipped
from ._events import NodeStarted as NodeStarted
from ._events import PlanCreated as PlanCreated
from ._events import ProgressEvent as ProgressEvent
from ._events import RunFinished as RunFinished
from ._exceptions import CheckpointCorruptError as CheckpointCorruptError
from ._exceptions import CheckpointError as CheckpointError
from ._exceptions import CheckpointMismatchError as CheckpointMismatchError
from ._exceptions import CheckpointNotFoundError as CheckpointNotFoundError
from ._exceptions import CheckpointWriteError as CheckpointWriteError
from ._exceptions import InvalidIdentifierError as InvalidIdentifierError
from ._exceptions import InvalidMetadataError as InvalidMetadataError
from ._exceptions import InvalidVibeError as InvalidVibeError
from ._exceptions import NodeError as NodeError
from ._exceptions import NodeOutputError as NodeOutputError
from ._exceptions import PlanLockedError as PlanLockedError
from ._exceptions import PlanningError as PlanningError
from ._exceptions import PlanValidationError as PlanValidationError
from ._exceptions import StaleLeaseError as StaleLeaseError
from ._exceptions import StoreUnavailableError as StoreUnavailableError
from ._exceptions import StrayCancellationError as StrayCancellationError
from ._exceptions import UnsafeCheckpointFolderError as UnsafeCheckpointFolderError
from ._exceptions import VibePlannerError as VibePlannerError
from ._metaplanner import MetaPlanner as MetaPlanner
from ._models import Checkpoint as Checkpoint
from ._models import CheckpointInfo as CheckpointInfo
from ._models import ErrorInfo as ErrorInfo
from ._models import ExecutionResult as ExecutionResult
from ._models import NodeResult as NodeResult
from ._models import NodeStatus as NodeStatus
from ._models import TokenUsage as TokenUsage
from ._models import Vibe as Vibe
from ._models import WorkflowNode as WorkflowNode
from ._models import WorkflowPlan as WorkflowPlan
from .execution._context import Handler as Handler
from .execution._context import NodeContext as NodeContext
from .execution._context import RetryPolicy as RetryPolicy
from .llm import LLMConfig as LLMConfig
from .llm import LLMRequestError as LLMRequestError
from .persistence._file_store import FileCheckpointStore as FileCheckpointStore
from .persistence._manager import WorkflowPersistenceManager as WorkflowPersistenceManager
from .persistence._memory_store import MemoryCheckpointStore as MemoryCheckpointStore
from .persistence._open import store_from_url as store_from_url
from .persistence._postgres_store import PostgresCheckpointStore as PostgresCheckpointStore
from .persistence._recorder import Durability as Durability
from .persistence._store import CheckpointStore as CheckpointStore
from .persistence._store import Latest as Latest
from .persistence._store import Lease as Lease
from .persistence._store import SnapshotWrite as SnapshotWrite
from .persistence._store import Stored as Stored
from .persistence._store import WriteBatch as WriteBatch
from .planning import LLMPlanner as LLMPlanner
from .planning import OfflinePlanner as OfflinePlanner
from .planning import Planner as Planner

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "CheckpointWriteError",
    "CheckpointWritten",
    "Durability",
    "ErrorInfo",
    "ExecutionResult",
    "FileCheckpointStore",
    "Handler",
    "InvalidIdentifierError",
    "InvalidMetadataError",
    "InvalidVibeError",
    "LLMConfig",
    "LLMPlanner",
    "LLMRequestError",
    "Latest",
    "Lease",
    "MemoryCheckpointStore",
    "MetaPlanner",
    "NodeCompleted",
    "NodeContext",
    "NodeError",
    "NodeFailed",
    "NodeOutputError",
    "NodeResult",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "NodeStatus",
    "OfflinePlanner",
    "PlanCreated",
    "PlanLockedError",
    "PlanValidationError",
    "Planner",
    "PlanningError",
    "PostgresCheckpointStore",
    "ProgressEvent",
    "RetryPolicy",
    "RunFinished",
    "SnapshotWrite",
    "StaleLeaseError",
    "StoreUnavailableError",
    "Stored",
    "StrayCancellationError",
    "TokenUsage",
    "UnsafeCheckpointFolderError",
    "Vibe",
    "VibePlannerError",
    "WorkflowNode",
    "WorkflowPersistenceManager",
    "WorkflowPlan",
    "WriteBatch",
    "store_from_url",
]
