"""atheris harness: proxyd.config.parse_config on TOML text.

See tests/fuzz/_runner.py for how to run it; `make fuzz` runs it with the seed corpus.
"""

from tests.fuzz._runner import main

if __name__ == "__main__":
    main("config")
