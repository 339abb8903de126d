"""Flex Template entry point: turn the template launcher's arguments into `lvd curate --engine beam`.

The Dataflow template launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE in the `dataflow`
target of infra/docker/Dockerfile.*) as

    python main.py --recipe=lvd142m --pool=gs://... --out=gs://... \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://... \
        --staging_location=gs://... --job_name=J --sdk_container_image=IMAGE \
        --experiments=use_runner_v2 --experiments=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver ...

that is, the template parameters of metadata.json plus Beam pipeline options, in Beam's
`--snake_case=value` spelling. This becomes

    lvd curate --engine beam --recipe lvd142m --pool gs://... --out gs://... \
        --runner DataflowRunner --project P --region R --temp-location gs://... \
        [--dataflow-service-options ...] -- --staging_location=gs://... --job_name=J ...

Contract with `lvd curate --engine beam` (pipelines/): the options after `--` are Beam pipeline
options to pass verbatim to `PipelineOptions`, and with LVD_BEAM_WAIT_UNTIL_FINISH=0 in the
environment the engine returns once the pipeline is submitted (a Flex Template launcher must not
block on `wait_until_finish`).

Status: the translation is tested. `--out` is a gs:// run directory, which the driver and the
Dataflow workers (they mount nothing) read and write through gcsfs (curation/core/storage.py). Not yet
run on Dataflow itself: see infra/dataflow/README.md, "Status".
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

# Template parameters (metadata.json) -> `lvd curate` flags. tests/infra checks both directions.
TEMPLATE_PARAMS = {
    "recipe": "--recipe",
    "pool": "--pool",
    "seeds_config": "--seeds-config",
    "out": "--out",
}
DEFAULTS = {"recipe": "lvd142m"}

# Beam pipeline options that `lvd curate --engine beam` takes as flags of its own.
CURATE_BEAM_FLAGS = {
    "runner": "--runner",
    "project": "--project",
    "region": "--region",
    "temp_location": "--temp-location",
    "dataflow_service_options": "--dataflow-service-options",
}


def parse_launcher_args(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """`--key=value`, `--key value` and bare `--flag` tokens, in order, as (key, value) pairs."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"unexpected argument {token!r}: the launcher passes only --options")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            pairs.append((key, value))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((key, argv[i + 1]))
            i += 1
        else:
            pairs.append((key, None))
        i += 1
    return pairs


def build_curate_argv(argv: Sequence[str]) -> list[str]:
    """The `lvd` argv (starting with `curate`) for the launcher's argv."""
    params: dict[str, str] = dict(DEFAULTS)
    own: list[str] = []
    passthrough: list[str] = []
    runner_given = False
    for key, value in parse_launcher_args(argv):
        name = key.replace("-", "_")
        if name in TEMPLATE_PARAMS:
            if value:  # an unset optional parameter may arrive as an empty string
                params[name] = value
        elif name in CURATE_BEAM_FLAGS and value is not None:
            own += [CURATE_BEAM_FLAGS[name], value]
            runner_given = runner_given or name == "runner"
        else:
            passthrough.append(f"--{key}" if value is None else f"--{key}={value}")
    for required in ("pool", "out"):
        if required not in params:
            raise ValueError(f"template parameter {required!r} is required")
    out = ["curate", "--engine", "beam"]
    for name, flag in TEMPLATE_PARAMS.items():
        if name in params:
            out += [flag, params[name]]
    if not runner_given:
        out += ["--runner", "DataflowRunner"]
    out += own
    if passthrough:
        out += ["--", *passthrough]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        lvd_argv = build_curate_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"lvd flex template: error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("LVD_BEAM_WAIT_UNTIL_FINISH", "0")
    print("lvd " + " ".join(lvd_argv), flush=True)
    from pipelines.cli import main as lvd_main

    return lvd_main(lvd_argv)


if __name__ == "__main__":
    sys.exit(main())
