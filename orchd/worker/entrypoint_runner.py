"""Runs an ``entrypoint`` deployment inside the deployment's own interpreter.

Executed by path (``python entrypoint_runner.py package.module:function``), so it needs nothing
from orchd in that interpreter: only the standard library.  The function is called with the run's
parameters ($ORCHD_PARAMETERS, JSON) as keyword arguments; ``{"result": its return value}`` is
written as JSON to $ORCHD_RESULT_FILE.  An exception prints its traceback to stderr, writes
``{"error": "ValueError: no data for 2026-05-01"}`` (the traceback's last line, the one a person
wants in the run's error) and exits 1, failing the run.
"""

import importlib
import json
import os
import sys
import traceback

#: The error is one line of the runs table, not a second copy of the output.
ERROR_MAX = 500


def summary(exc: BaseException) -> str:
    """``ValueError: no data``, as the traceback's last line names it (module-qualified unless a
    builtin), with only the first line of a multi-line message."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    message = str(exc).strip().split("\n", 1)[0]
    line = f"{name}: {message}" if message else name
    return line if len(line) <= ERROR_MAX else line[: ERROR_MAX - 3] + "..."


def write(outcome: dict) -> None:  # type: ignore[type-arg]
    with open(os.environ["ORCHD_RESULT_FILE"], "w", encoding="utf-8") as out:
        out.write(json.dumps(outcome))


def main(target: str) -> int:
    sys.path.insert(0, os.getcwd())
    module_name, _, function_name = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(**json.loads(os.environ.get("ORCHD_PARAMETERS") or "{}"))
    except Exception as exc:
        traceback.print_exc()
        write({"error": summary(exc)})
        return 1
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        print(f"[orchd: the result {type(result).__name__} is not JSON-serialisable; its repr is stored]")
        result = repr(result)
    write({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
