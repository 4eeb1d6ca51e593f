"""The ``--dry-run`` text of a plan: what would run, where, with which data and adaptations."""

from __future__ import annotations

from detco_bench.engines import get_engine
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer.weights import weights_cached


def batch_line(plan: TransferPlan) -> str:
    """The schedule the run will use, as it is after the scaling rule and --opts."""
    p = plan.protocol
    solver = plan.config["SOLVER"]
    text = (f"{p['total_batch']} images per iteration ({p['ims_per_gpu']} per process, BN over "
            f"{p['ims_per_bn_group']}), lr {p['base_lr']:g}, {p['max_iter']} iterations, steps "
            f"{list(solver.get('STEPS') or [])}, warm-up {solver.get('WARMUP_ITERS')}")
    how = plan.scaling["rule"] + " scaling rule" + (" + --opts" if plan.opts else "")
    return f"{text} ({how}; protocol {p['protocol']})"


def describe_plan(plan: TransferPlan) -> list[str]:
    """Human-readable lines for ``--dry-run`` (the config is printed separately)."""
    lines = [f"task        {plan.task_label} ({plan.family}; {plan.task_obj.description})"]
    why = get_engine(plan.engine).available()
    lines.append(f"engine      {plan.engine}" + (f"  [NOT USABLE: {why}]" if why else ""))
    if plan.checkpoint:
        ck = plan.checkpoint
        lines.append(
            f"checkpoint  {ck.path} (sha256 {ck.sha256[:12]}..., {ck.format}, {ck.arch}, method "
            f"{ck.method}, epochs {ck.pretrain_epochs})"
        )
        cached = weights_cached(plan.weights or "", ck.sha256)
        how = "cached, verified" if cached else "will be converted and verified"
        lines.append(f"weights     {plan.weights} ({how})")
    else:
        lines.append("checkpoint  (none given)")
    st = plan.state
    detail = {
        "new": "new job",
        "finished": f"finished (record {st.get('record')}); rerun needs --force",
        "resume": f"interrupted job, resumes from {st.get('checkpoint') or 'its start'}",
        "conflict": st.get("reason", ""),
    }.get(st["status"], st["status"])
    if plan.force and st["status"] in ("finished", "conflict", "resume"):
        detail += "  [--force: starts over]"
    lines.append(f"output      {plan.out_dir}  ({detail})")
    lines.append(f"record      {plan.record_path}")
    where = (
        f"{plan.device}, {plan.gpus} process(es) per machine x {plan.num_machines} machine(s) = world size "
        f"{plan.world_size}"
    )
    if plan.launcher == "slurm":
        s = plan.slurm
        where += f"; Slurm via submitit (partition {s.partition or 'default'}, {s.time_min} min)"
    elif plan.world_size > 1:
        where += f"; one process per GPU, dist-url {plan.dist_url}"
    lines.append(f"launch      {where}")
    lines.append(f"batch/lr    {batch_line(plan)}")
    lines.append(f"data root   {plan.data_root}")
    for name, spec in plan.datasets.items():
        path = spec.json_file or spec.voc_dir or spec.gt_dir
        extra = f" (subset of {spec.subset['source']})" if spec.subset else ""
        lines.append(f"  dataset   {name}: {spec.kind} {spec.image_root} | {path}{extra}")
    if plan.problems:
        for p in plan.problems:
            lines.append(f"  PROBLEM   {p}")
    else:
        lines.append("  check     ok: every dataset folder and file the task needs is present")
    for a in plan.adaptations:
        lines.append(f"adapted     {a['key']}: {a['from']!r} -> {a['to']!r} ({a['why']})")
    if plan.opts:
        lines.append(f"opts        {' '.join(plan.opts)}")
    lines.append(f"command     {plan.command()}")
    return lines
