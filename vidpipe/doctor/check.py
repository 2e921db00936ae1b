"""The `Check` row every doctor check returns, its statuses and how the table colours them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OK, WARN, FAIL, INFO, SKIPPED = "ok", "warn", "fail", "info", "skipped"
STATUS_STYLES = {OK: "green", WARN: "yellow", FAIL: "bold red", INFO: "cyan", SKIPPED: "dim"}
GB = 1024**3


@dataclass(frozen=True)
class Check:
    """One row of the doctor's report: what was checked, how it stands, what was found and what to do."""

    name: str
    status: str  # ok | warn | fail | info | skipped
    found: str
    fix: str = ""  # what to do about it ('' when nothing needs doing)
    details: dict = field(default_factory=dict)  # machine-readable findings, for the JSON only

    def as_dict(self) -> dict:
        return asdict(self)
