"""`vidpipe serve`: warm ranks behind an HTTP job queue (engine), the API (app), the job store (SQLite) and the page
(static/). The job model it shares with job files and `submit` is `vidpipe/jobspec.py`."""
