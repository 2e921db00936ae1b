"""`vidpipe serve`: warm ranks behind an HTTP job queue (engine), the API (app), the job store (SQLite), the job
model shared with job files (jobspec), and the page (static/)."""
