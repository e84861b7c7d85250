"""The meter's samples in the state database, as each hub recorded them.

A hub's meter (`hubs/_runner.py`) appends one JSON line to `meter.jsonl` in the attempt's job
folder every `meter.interval` seconds; its energy counters are cumulative from the attempt's start,
so a sample that is lost or read twice changes nothing but the resolution. The supervisor copies
new lines here with the log (`ingest`), keeping in the same transaction how far it read, so a
dropped link or a supervisor killed mid-copy neither loses nor doubles a sample.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "SampleStore"]


@dataclass(frozen=True)
class Sample:
    """One reading of one attempt's meter (energies in joules since the attempt started)."""

    hub_job_id: str
    hub: str
    at: float  # seconds since the epoch, the hub's wall clock
    gpu_j: float | None
    cpu_j: float
    gpu_w: float | None
    cpu_w: float | None
    gpu_source: str | None  # nvml-energy, nvml-power, nvidia-smi; None: no GPU read
    cpu_source: str  # rapl, tdp-estimate
    shared_gpu: bool
    gpu_names: tuple[str, ...]

    @property
    def energy_j(self) -> float:
        return (self.gpu_j or 0.0) + self.cpu_j

    @classmethod
    def parse(cls, hub_job_id: str, hub: str, data: dict[str, Any]) -> Sample | None:
        """The sample a meter line holds; None for an error line or one this harchos cannot
        read (a newer hub script), which the ledger then treats as a gap."""
        try:
            gpu_j = data.get("gpu_j")
            gpu_w = data.get("gpu_w")
            cpu_w = data.get("cpu_w")
            return cls(
                hub_job_id,
                hub,
                float(data["t"]),
                None if gpu_j is None else float(gpu_j),
                float(data["cpu_j"]),
                None if gpu_w is None else float(gpu_w),
                None if cpu_w is None else float(cpu_w),
                data.get("gpu_source") or None,
                str(data.get("cpu_source") or "tdp-estimate"),
                bool(data.get("shared_gpu")),
                tuple(str(name) for name in data.get("gpu_names") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None


class SampleStore:
    """The `energy_samples` and `energy_offsets` tables."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def offset(self, job_id: str, hub_job_id: str) -> int:
        row = self.db.execute(
            "SELECT offset FROM energy_offsets WHERE job_id = ? AND hub_job_id = ?",
            (job_id, hub_job_id),
        ).fetchone()
        return int(row[0]) if row else 0

    def ingest(self, job_id: str, hub_job_id: str, hub: str, offset: int, data: bytes) -> int:
        """Store the whole lines of `data` (the meter file's bytes from `offset`) and return the
        new offset: just past the last whole line (a line still being written waits)."""
        end = data.rfind(b"\n") + 1
        if end == 0:
            return offset
        rows = []
        for line in data[:end].splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("t"), int | float):
                rows.append((job_id, hub_job_id, hub, float(parsed["t"]), json.dumps(parsed)))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT OR IGNORE INTO energy_samples (job_id, hub_job_id, hub, at, sample) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self.db.execute(
                "INSERT INTO energy_offsets (job_id, hub_job_id, offset) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id, hub_job_id) DO UPDATE SET offset = excluded.offset",
                (job_id, hub_job_id, offset + end),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return offset + end

    def raw(self, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """Every stored line of the job's meters: (hub job id, hub, line), oldest first."""
        rows = self.db.execute(
            "SELECT hub_job_id, hub, sample FROM energy_samples WHERE job_id = ? ORDER BY at",
            (job_id,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def samples(self, job_id: str) -> list[Sample]:
        """The job's readable samples, oldest first."""
        parsed = (Sample.parse(hub_job_id, hub, line) for hub_job_id, hub, line in self.raw(job_id))
        return [sample for sample in parsed if sample is not None]

    def errors(self, job_id: str) -> list[str]:
        """What the job's meters reported when they stopped (one line each)."""
        return [
            f"the meter on hub {hub} stopped: {line['error']}"
            for _, hub, line in self.raw(job_id)
            if line.get("error")
        ]

    def latest_power(self, job_id: str) -> dict[str, float]:
        """Hub name: watts the job drew over its newest sample's interval there."""
        rows = self.db.execute(
            "SELECT hub, sample FROM energy_samples WHERE job_id = ? AND at = "
            "(SELECT MAX(at) FROM energy_samples AS newest WHERE newest.job_id = ? "
            "AND newest.hub = energy_samples.hub)",
            (job_id, job_id),
        ).fetchall()
        power: dict[str, float] = {}
        for hub, text in rows:
            sample = Sample.parse("", hub, json.loads(text))
            if sample is not None and sample.cpu_w is not None:
                power[str(hub)] = sample.cpu_w + (sample.gpu_w or 0.0)
        return power

    def remember_power(
        self, project_dir: str, kind: str, *, watts: float, gpus: int, job_id: str, at: str
    ) -> None:
        """The measured average power of a project's workload, for its next plan."""
        self.db.execute(
            "INSERT INTO workload_power (project_dir, kind, watts, gpus, job_id, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project_dir, kind) DO UPDATE SET "
            "watts = excluded.watts, gpus = excluded.gpus, job_id = excluded.job_id, "
            "updated_at = excluded.updated_at",
            (project_dir, kind, watts, gpus, job_id, at),
        )

    def remembered_power(self, project_dir: str, kind: str) -> tuple[float, int, str] | None:
        """(watts, GPUs it ran on, job id) measured last time, or None."""
        row = self.db.execute(
            "SELECT watts, gpus, job_id FROM workload_power WHERE project_dir = ? AND kind = ?",
            (project_dir, kind),
        ).fetchone()
        return (float(row[0]), int(row[1]), str(row[2])) if row else None
