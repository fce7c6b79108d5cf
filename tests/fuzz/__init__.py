"""Fuzz harnesses for proxyd's parsers (atheris; `make fuzz`), shared with the hypothesis tests."""
