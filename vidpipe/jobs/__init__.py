"""What the ranks of one command do, end to end: a picklable job with `run(ctx, events)`, executed by the
runtime on every rank. Jobs glue a model, a strategy and the phases together."""
