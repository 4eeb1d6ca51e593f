"""`detco-bench run` and `detco-bench demo`: one checkpoint, and its in-harness baselines, through a
suite of jobs (transfer tasks and linear probes), then the report.

The pipeline owns a folder:
  ROOT/pipeline.json         the plan and every job's status (atomically rewritten)
  ROOT/weights/cache/        the verified conversions (done once, before any job; the jobs reuse them)
  ROOT/baselines/            checkpoints the harness makes for its baselines (random init)
  ROOT/jobs/<job>/           each job's own output folder (resumable by the job itself);
                             a baseline's jobs under ROOT/jobs/<baseline>/<job>/
  ROOT/records/              transfer result records (linear records stay in their job folder)
  ROOT/report/               the final report (tables, Markdown, HTML, plots)

Each job runs as its own `detco-bench` process (a crash or a kill cannot corrupt the pipeline;
records are written atomically by the jobs). A job with a successful record of the settings asked is never rerun; a job
that fails is retried up to `max_retries` times. Killed and rerun, the pipeline resumes where it
stopped: interrupted jobs resume from their own folders.

  suites.py     `Job`, the named suites, `parse_suite`
  baselines.py  ``--baselines``: random init, labelled and plain checkpoints
  config.py     `PipelineConfig` and the state file
  jobs.py       a job's command line, its record, its Slurm submission
  reuse.py      whether a job's record answers the settings asked now (else it is not skipped)
  runner.py     `run_pipeline`, the report at the end
  demo.py       `run_demo`: the README's main job
"""

from __future__ import annotations

from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.demo import prepare_demo, run_demo
from detco_bench.pipeline.jobs import job_command, successful_record
from detco_bench.pipeline.runner import make_report, run_pipeline, summarize
from detco_bench.pipeline.suites import SUITES, Job, parse_suite

__all__ = ["SUITES", "Job", "PipelineConfig", "job_command", "make_report", "parse_suite", "prepare_demo",
           "run_demo", "run_pipeline", "successful_record", "summarize"]
