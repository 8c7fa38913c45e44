"""`distcomp console`: a web console for one queue (docs/CONSOLE.md).

- `app`: the Starlette application (pages, live fragments, JSON API, login);
- `reads`: paged reads by HSCAN/ZSCAN cursor, one task's record, the problems (read-only);
- `actions`: retry, delete, retry all failed, purge finished (through `Queue` and `queue.manager`);
- `auth`: the token, the session cookie and the same-origin check;
- `sampler`: the throughput sparkline's samples;
- `server`: runs it under uvicorn.
"""
