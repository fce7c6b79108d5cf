"""atheris harness: the renewal challenge reply: reply_length, parse_challenge_reply (+ validate_chain of the proof).

See tests/fuzz/_runner.py for how to run it; `make fuzz` runs it with the seed corpus.
"""

from tests.fuzz._runner import main

if __name__ == "__main__":
    main("renewal")
