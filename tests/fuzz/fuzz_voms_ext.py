"""atheris harness: voms_ext parsers: parse_attribute_certificate, parse_voms_extension, parse_credential_pem, classify, parse_lsc, slash_to_name, parse_fqan.

See tests/fuzz/_runner.py for how to run it; `make fuzz` runs it with the seed corpus.
"""

from tests.fuzz._runner import main

if __name__ == "__main__":
    main("voms_ext")
