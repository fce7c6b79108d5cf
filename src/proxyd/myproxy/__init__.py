"""The MyProxy v2 protocol: a sans-I/O codec and conversation, an asyncio TLS server and a
small client."""
