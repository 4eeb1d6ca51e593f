"""``python -m detco_bench``: the `detco-bench` command line (same commands, same exit codes)."""

from detco_bench.cli import main

if __name__ == "__main__":
    main()
