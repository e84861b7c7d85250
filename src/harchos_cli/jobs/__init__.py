"""Jobs: the workload spec (`harchos.toml`), the job store, planning, launchers and the supervisor.

The public entry points are `spec.load_project`, `planner.plan`, `store.JobStore` and
`supervisor.submit` / `supervisor.supervise`; `cli/run.py` and `cli/jobs.py` are thin layers over
them.
"""
