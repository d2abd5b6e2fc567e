"""Lightning training of nested models: the module, model building and callbacks (tasks: sortednet.tasks)."""

from ..tasks import CausalLM, Classification, Task, task_for
from .module import SortedNetModule

__all__ = ["CausalLM", "Classification", "SortedNetModule", "Task", "task_for"]
