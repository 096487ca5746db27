"""Compare the registered encoders on DSC, NSD, runtime and memory: a thin wrapper of `medsamlite bench`.

    python benchmarks/compare_encoders.py                      # synthetic set, every model
    python benchmarks/compare_encoders.py --data DIR --models litemedsam repvit_m0_6_medsam
"""
import sys

from medsamlite.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
