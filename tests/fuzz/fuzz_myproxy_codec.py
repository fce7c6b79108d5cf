"""atheris harness: the MyProxy v2 codec: parse_request, parse_response, parse_certificates, der_length, chain_length, parse_csr (+ the server's key check).

See tests/fuzz/_runner.py for how to run it; `make fuzz` runs it with the seed corpus.
"""

from tests.fuzz._runner import main

if __name__ == "__main__":
    main("myproxy_codec")
