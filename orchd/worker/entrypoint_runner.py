"""Runs an ``entrypoint`` deployment inside the deployment's own interpreter.

Executed by path (``python entrypoint_runner.py package.module:function``), so it needs nothing
from orchd in that interpreter: only the standard library.  The function is called with the run's
parameters ($ORCHD_PARAMETERS, JSON) as keyword arguments; its return value is written as JSON to
$ORCHD_RESULT_FILE.  An exception prints its traceback to stderr and exits 1, failing the run.
"""

import importlib
import json
import os
import sys
import traceback


def main(target: str) -> int:
    sys.path.insert(0, os.getcwd())
    module_name, _, function_name = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(**json.loads(os.environ.get("ORCHD_PARAMETERS") or "{}"))
    except Exception:
        traceback.print_exc()
        return 1
    try:
        encoded = json.dumps(result)
    except (TypeError, ValueError):
        print(f"[orchd: the result {type(result).__name__} is not JSON-serialisable; its repr is stored]")
        encoded = json.dumps(repr(result))
    with open(os.environ["ORCHD_RESULT_FILE"], "w", encoding="utf-8") as out:
        out.write(encoded)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
