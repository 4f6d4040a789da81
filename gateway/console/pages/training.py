"""Training: submit a job, watch it run (progress, loss and validation-loss curve, ETA,
live), cancel it.

The form's fields are the job's settings by their own names (`steps`, `learning_rate`,
...), sent as typed; the scheduler checks them and names a bad one
(`spec.config.steps: ...`), and the refusal appears next to that field. The job page
polls a fragment every two seconds until the job has ended."""

from __future__ import annotations

import math

from aiohttp import web
from google.protobuf.struct_pb2 import Struct

from gateway.auth.scopes import DATASETS, TRAINING
from gateway.console.app import Console
from gateway.console.charts import loss_chart
from gateway.console.forms import FieldErrors, field_errors
from gateway.console.view import View
from llmos.cluster_view import duration_text, state_of
from llmos.errors import InvalidArgument, LLMOSError
from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, scheduler_pb2, storage_pb2

#: the job settings the form offers, with their defaults (`llmos.training.TrainingConfig`)
SETTINGS: dict[str, str] = {
    "steps": "100",
    "batch_size": "8",
    "seq_len": "64",
    "learning_rate": "0.001",
    "schedule": "cosine",
    "warmup_steps": "10",
    "eval_every": "25",
    "checkpoint_every": "50",
    "seed": "0",
    "base_model": "",
    "dataset": "",
}
TEXT_SETTINGS = frozenset({"schedule", "base_model", "dataset"})
SPEC_FIELDS = {
    "name": "",
    "priority": "normal",
    "processes": "1",
    "cpus": "1",
    "memory_mib": "1024",
}
#: API field names that are not the form's own
ALIASES = {"cpu_millicores": "cpus", "memory_bytes": "memory_mib"}
ENDED = frozenset(
    {
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_CANCELLED,
    }
)


def _value(text: str) -> float | str:
    """A number if the text is one (the scheduler then checks its range), else the text
    itself (and the scheduler says it must be a number)."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def submission(form: dict[str, str]) -> scheduler_pb2.SubmitJobRequest:
    """The SubmitJob request a filled-in form stands for (the scheduler validates)."""
    config = Struct()
    for name in SETTINGS:
        raw = form.get(name, "").strip()
        if raw:
            config[name] = raw if name in TEXT_SETTINGS else _value(raw)
    priority = PriorityClass.parse(form.get("priority") or "normal", "priority")
    resources = common_pb2.Resources(
        processes=_whole(form.get("processes", "1"), "processes"),
        cpu_millicores=_whole(form.get("cpus", "1"), "cpus") * 1000,
        memory_bytes=_whole(form.get("memory_mib", "1024"), "memory_mib") << 20,
    )
    spec = scheduler_pb2.JobSpec(
        name=form.get("name", "").strip(),
        kind="training",
        priority=priority.value,  # type: ignore[arg-type]
        resources=resources,
        config=config,
    )
    return scheduler_pb2.SubmitJobRequest(spec=spec)


def _whole(text: str, field: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(field, "must be a whole number") from None
    if not 0 <= value <= 1 << 20:
        raise InvalidArgument(field, "is out of range")
    return value


def job_facts(job: scheduler_pb2.Job) -> dict[str, object]:
    """What the job page shows of a job, in words."""
    p = job.progress
    return {
        "state": state_of(job),
        "ended": job.state in ENDED,
        "step": p.step,
        "total": p.total_steps,
        "fraction": p.step / p.total_steps if p.total_steps else 0.0,
        "loss": f"{p.loss:.4f}" if p.step else "-",
        "val_loss": f"{p.val_loss:.4f}" if p.val_loss else "-",
        "rate": f"{p.tokens_per_s:.0f}" if p.step else "-",
        "eta": duration_text(p.eta_s) if p.step and job.state not in ENDED else "-",
        "chart": loss_chart(job.history, p.total_steps),
    }


def register(console: Console) -> None:
    async def listing(view: View) -> list[scheduler_pb2.Job]:
        reply = await view.call("Gateway/ListJobs", scheduler_pb2.ListJobsRequest(page_size=50))
        return list(reply.jobs)

    async def form_page(
        view: View, values: dict[str, str], errors: FieldErrors, status: int = 200
    ) -> web.Response:
        datasets: list[str] = []
        if view.may(DATASETS):
            try:
                found = await view.call("Storage/ListDatasets", storage_pb2.ListDatasetsRequest())
                datasets = sorted(d.name for d in found.datasets)
            except LLMOSError:
                datasets = []
        return view.render(
            "training.html",
            status=status,
            values=values,
            errors=errors,
            datasets=datasets,
            jobs=await listing(view),
            state_of=state_of,
            priorities=[c.word for c in PriorityClass],
        )

    async def show(view: View) -> web.StreamResponse:
        return await form_page(view, {**SETTINGS, **SPEC_FIELDS}, {})

    async def submit(view: View) -> web.StreamResponse:
        form = await view.form()
        values = {
            **SETTINGS,
            **SPEC_FIELDS,
            **{k: form.get(k, "") for k in (*SETTINGS, *SPEC_FIELDS)},
        }
        try:
            job = await view.call("Gateway/SubmitJob", submission(form))
        except InvalidArgument as exc:
            errors = field_errors(exc, values, ALIASES)
            return await form_page(view, values, errors, 400)
        raise web.HTTPFound(f"/console/training/{job.job_id}")

    async def jobs_fragment(view: View) -> web.StreamResponse:
        return view.render("training_jobs.html", jobs=await listing(view), state_of=state_of)

    async def job(view: View, template: str) -> web.StreamResponse:
        request = scheduler_pb2.GetJobRequest(job_id=view.request.match_info["job_id"])
        found = await view.call("Gateway/GetJob", request)
        return view.render(template, job=found, facts=job_facts(found))

    async def show_job(view: View) -> web.StreamResponse:
        return await job(view, "job.html")

    async def live_job(view: View) -> web.StreamResponse:
        return await job(view, "job_live.html")

    async def cancel(view: View) -> web.StreamResponse:
        job_id = view.request.match_info["job_id"]
        request = scheduler_pb2.CancelJobRequest(job_id=job_id, reason="cancelled in the console")
        await view.call("Gateway/CancelJob", request)
        raise web.HTTPFound(f"/console/training/{job_id}")

    console.page("GET", "/console/training", TRAINING, show)
    console.page("POST", "/console/training", TRAINING, submit)
    console.page("GET", "/console/training/jobs", TRAINING, jobs_fragment)
    console.page("GET", "/console/training/{job_id}", TRAINING, show_job)
    console.page("GET", "/console/training/{job_id}/live", TRAINING, live_job)
    console.page("POST", "/console/training/{job_id}/cancel", TRAINING, cancel)
