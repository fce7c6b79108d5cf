"""The pilot agent: pull a task, fetch its limited proxy, run the payload under watch, report."""
