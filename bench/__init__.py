"""proxyd benchmarks: run with `make bench`, or `python -m bench.<script> --help`."""
