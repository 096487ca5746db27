#!/bin/sh
# The challenge's entry point: every case in the inputs folder, segmentations to the outputs folder (torch-free).
# The paths default to the container's; tests/test_packaging.py runs this script in a runtime-only venv.
exec medsamlite predict -i "${INPUTS:-/workspace/inputs}" -o "${OUTPUTS:-/workspace/outputs}" --model "${MODEL:-/opt/model}"
