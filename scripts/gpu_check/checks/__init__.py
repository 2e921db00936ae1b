"""The checks that are more than one command, each a subcommand run in its own process under its step's timeout:
`versions`, `compare-latents`, `serve-check`, `fault-check`. Each writes one JSON report and exits 1 when it
failed, with one `gpu-check: failed:` line saying why."""
