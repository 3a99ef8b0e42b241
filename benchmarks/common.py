"""Shared helper of the benchmark scripts: result files. The environment record and the timing are the
package's (:mod:`covkernels.bench`: ``environment``, ``median_seconds``, ``paired_times``); ``environment``
is re-exported here for the scripts that import it from this module."""
from __future__ import annotations

import json
import os

from covkernels.bench import environment  # noqa: F401 (re-exported)


def write_results(name: str, payload: dict, table: str, command: str) -> str:
    """Write ``results/<name>.json`` and ``results/<name>.md``; return the Markdown path."""
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    payload = dict(payload, command=command)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    env = payload["environment"]
    md = (f"# {name}\n\nDevice: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}, "
          f"git {env['git_revision']}.\n\nReproduce: `{command}`\n\n{table}\n")
    path = os.path.join(out_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write(md)
    return path
