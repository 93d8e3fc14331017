"""Golden tasks: testing agents you can ship (`keel eval`).

``task`` reads golden task files, ``stand_ins`` answers for the model and the tools offline,
``runner`` runs tasks through the real runtime apart from production's data, ``expect`` checks
what a run did, ``report`` prints it (and compares two models), ``record`` turns a trace into a
golden task.
"""

from agents.evals.expect import Failure, Observed, ObservedCall, check
from agents.evals.record import RecordError, record_task, to_toml
from agents.evals.report import Comparison, as_json, render
from agents.evals.runner import EvalSession, TaskResult, run_tasks
from agents.evals.task import GoldenTask, discover, evals_dir, load_task

__all__ = ["Comparison", "EvalSession", "Failure", "GoldenTask", "Observed", "ObservedCall",
           "RecordError", "TaskResult", "as_json", "check", "discover", "evals_dir", "load_task",
           "record_task", "render", "run_tasks", "to_toml"]
