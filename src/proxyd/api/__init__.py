"""The HTTPS JSON API (aiohttp)."""
