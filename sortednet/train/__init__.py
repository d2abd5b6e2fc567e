"""Lightning training of nested models: the module, tasks, model building and callbacks."""

from .module import SortedNetModule
from .tasks import CausalLM, Classification, Task, task_for

__all__ = ["CausalLM", "Classification", "SortedNetModule", "Task", "task_for"]
