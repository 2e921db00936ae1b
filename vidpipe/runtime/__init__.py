"""Process launch, supervision, the per-rank distributed context and the events workers send to the parent."""
