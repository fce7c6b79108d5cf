"""Expiry reminders: owners of stored credentials are told before their credential expires.

`settings` parses `[reminders]`; `plan` decides, as a pure function, which
reminder is due for which credential; `deliver` sends it (SMTP with STARTTLS,
and/or a webhook). The sweep that ties them to the store and the audit log
is `proxyd.core.reminders`.
"""
