"""`generate`: images -> videos. Phase 1 diffuses every sample under the chosen strategy; phase 2 frees the
UNet and decodes on every rank, writing each sample's files as soon as they exist."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from vidpipe import media
from vidpipe.config import GenerateConfig
from vidpipe.errors import UsageError
from vidpipe.jobs.decode import decode_and_write, plan_decode, redistribute
from vidpipe.jobs.diffusion import build_layout, gather_to_first, load_model_for, run_diffusion
from vidpipe.jobs.run import place, run_with_display
from vidpipe.jobspec import expand, read_job_file
from vidpipe.metrics import mark_memory, reset_memory_peak, timeline
from vidpipe.models.base import Sample
from vidpipe.models.registry import family_module, resolve_model
from vidpipe.models.source import ModelSource
from vidpipe.parallel.plan import AUTO, ParallelPlan
from vidpipe.report import (
    assignment_table,
    run_report,
    stderr_console,
    summary_table,
    write_json,
)
from vidpipe.runtime.devices import cuda_device_count, resolve_device_type, resolve_dtype
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, FilesWritten, PhaseStarted
from vidpipe.runtime.launch import under_torchrun
from vidpipe.strategies.registry import scheduler_for

#: Ranks when --gpus is not given on a machine without CUDA (with CUDA: every visible GPU).
DEFAULT_GPUS = 1


def sampling_params(config: GenerateConfig, source: ModelSource, size: tuple[int, int, int]):
    """The run's sampling parameters, as the model's family takes them."""
    return family_module(source.family).params(config, size)


@dataclass(frozen=True)
class GenerateJob:
    config: GenerateConfig
    source: ModelSource
    dtype: str
    plan: ParallelPlan
    samples: tuple[Sample, ...]
    targets: dict  # sample index -> {format: path}
    input_targets: dict  # sample index -> path of "{stem}_input.png" (first sample of each image)
    manifest: str | None = None  # under torchrun the writing rank appends the manifest line itself
    jobs: dict | None = None  # sample index -> job id (a job file)
    size: tuple[int, int, int] = (0, 0, 0)  # (frames, height, width) of the run

    def run(self, ctx: DistContext, events: EventSink):
        events.emit(PhaseStarted(ctx.rank, phase="load"))
        layout = build_layout(ctx, self.plan)
        own_steps = any(sample.params is not None for sample in self.samples)  # a job file's samples
        model = load_model_for(layout, self.source, self.dtype, sampling_params(self.config, self.source, self.size),
                               samples_set_steps=own_steps)
        samples = list(self.samples)
        finals, record = run_diffusion(layout, model, samples, self.config.warmup_samples, events,
                                       self.config.run.compile, every_step=self.config.run.verbose)

        # Phase 2: the UNet goes first, so decode has the memory diffusion used.
        events.emit(PhaseStarted(ctx.rank, phase="decode"))
        model.release_denoiser()
        reset_memory_peak(ctx.device)  # the decode peak must not count the UNet just freed
        specs = [model.sample_spec(sample)["latents"] for sample in samples]
        sizes = [model.decode_units(sample) for sample in samples]
        # NOTE: over several machines only rank 0's machine decodes, so every file lands beside the report.
        tasks = plan_decode(sizes, ctx.first_machine_ranks)
        owner_group = scheduler_for(self.plan).owner_group
        mine = redistribute(ctx, samples, tasks, finals,
                            lambda position: layout.group_ranks(owner_group(position, self.plan.groups)), specs)
        rows = decode_and_write(ctx, model, samples, tasks, mine, self.targets, self.input_targets, events,
                                Path(self.manifest) if self.manifest else None, self.jobs or {})
        mark_memory(ctx.device, record, "decode")
        gathered = gather_to_first(ctx, (record, rows))
        if not ctx.is_first:
            return None
        return {"records": [r for r, _ in gathered], "rows": [row for _, rs in gathered for row in rs]}


def plan_samples(config: GenerateConfig, images: list) -> list[Sample]:
    """Sample i of the run uses seed + i; each image gets `samples` of them, image by image."""
    samples = []
    for image_path, image in zip(config.images, images, strict=True):
        for _ in range(config.samples):
            index = len(samples)
            samples.append(Sample(index, config.seed + index, image, Path(image_path).stem))
    return samples


def plan_outputs(config: GenerateConfig, samples: list[Sample]) -> tuple[list[Sample], dict, dict]:
    """(samples still to run, their target paths, input-image paths). Existing files are never overwritten
    silently: `--resume` skips samples whose outputs are all there and redoes the others (an interrupted run can
    leave a sample with some of its formats written: those are replaced), `--overwrite` replaces them."""
    out = Path(config.out)
    kinds = list(config.formats) + (["latents"] if config.save_latents else [])
    targets, inputs, existing, todo = {}, {}, [], []
    seen_stems = set()
    for sample in samples:
        stem = media.sample_stem(sample.image_name, sample.index, sample.seed)
        paths = media.output_paths(out, stem, kinds)
        if config.resume and media.is_complete(paths):
            continue
        todo.append(sample)
        if not config.resume:
            existing += media.existing_outputs(paths)
        targets[sample.index] = {kind: str(path) for kind, path in paths.items()}
        if sample.image_name not in seen_stems:
            seen_stems.add(sample.image_name)
            inputs[sample.index] = str(out / f"{sample.image_name}_input.png")
    if existing and not config.overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(
            f"{existing[0]}{more} already exist(s): pass --overwrite to replace, --resume to skip finished "
            "samples, or choose another --out"
        )
    return todo, targets, inputs


@dataclass
class RunPlan:
    """The samples of one generate run, where their files go, and what the report says of each."""

    samples: list[Sample]
    targets: dict  # sample index -> {format: path}
    inputs: dict  # sample index -> path of "{stem}_input.png"
    info: dict  # sample index -> {"image": path, and "job": id for a job file}
    size: tuple[int, int, int]  # the largest (frames, height, width): what auto plans memory for


def plan_images(config: GenerateConfig, source) -> RunPlan:
    """Images on the command line: every sample with the run's options."""
    size = family_module(source.family).resolve_size(source, config.frames, config.height, config.width)
    limits = config.limits.for_model(source)  # the same limits, and words, as a server's and a job file's
    limits.check_count(config.samples)
    limits.check_seeds(config.seed, config.seed + config.num_samples - 1)
    limits.check_sample(config.steps, *size)
    images = [media.load_image(Path(path)) for path in config.images]
    if source.family == "svd" and config.decode_chunk_size > size[0]:
        raise UsageError(f"--decode-chunk-size {config.decode_chunk_size}: must be between 1 and {size[0]} frames")
    all_samples = plan_samples(config, images)
    samples, targets, inputs = plan_outputs(config, all_samples)
    info = {s.index: {"image": config.images[s.index // config.samples]} for s in all_samples}
    return RunPlan(samples, targets, inputs, info, size)


def plan_job_file(config: GenerateConfig, source) -> RunPlan:
    """`--jobs FILE.jsonl`: each line a job with its own image, options and sweep (the command's options are the
    defaults; the model's family builds each sample's parameters); job `id`'s files go to OUT/id/. `--resume`
    skips every sample, so every id, already finished."""
    out = Path(config.out)
    samples, targets, inputs, info, existing = [], {}, {}, {}, []
    for entry in read_job_file(config.jobs_path):
        image = media.load_image(Path(entry.image))
        # NOTE: checked here on one rank; generate checks every sample against the plan once it is placed.
        specs, kinds = expand(entry.options, entry.sweep, source, ParallelPlan("dp", 1), config,
                              f"{config.jobs_path} job {entry.id}: ", config.limits)
        stem = Path(entry.image).stem
        media.check_output_dir(out / entry.id)
        for spec in specs:
            index = len(info)
            info[index] = {"image": entry.image, "job": entry.id}
            paths = media.output_paths(out / entry.id, media.sample_stem(stem, spec.index, spec.seed), kinds)
            if config.resume and media.is_complete(paths):
                continue
            if not config.resume:  # a sample partly written by an interrupted run is redone
                existing += media.existing_outputs(paths)
            samples.append(Sample(index, spec.seed, image, stem, spec.params))
            targets[index] = {kind: str(path) for kind, path in paths.items()}
            if spec.index == 0:
                inputs[index] = str(out / entry.id / f"{stem}_input.png")
    if existing and not config.overwrite:
        raise UsageError(f"{existing[0]} and {len(existing) - 1} more already exist(s): pass --overwrite to replace, "
                         "--resume to skip finished samples, or choose another --out")
    sizes = [(s.params.frames, s.params.height, s.params.width) for s in samples] or [(1, 1, 1)]
    return RunPlan(samples, targets, inputs, info, tuple(max(d) for d in zip(*sizes, strict=True)))


def generate(config: GenerateConfig) -> dict | None:
    """Run `vidpipe generate`; returns the report (None on torchrun ranks other than 0)."""
    # 1. Everything that can be wrong with the input is checked before any process starts.
    media.check_output_dir(Path(config.out))
    source = resolve_model(config.model, config.offline, Path(config.cache_dir) if config.cache_dir else None)
    config = family_module(source.family).complete(config)  # its defaults; options it does not take refused
    run = plan_job_file(config, source) if config.jobs_path else plan_images(config, source)
    if "mp4" in {kind for t in run.targets.values() for kind in t}:
        media.check_ffmpeg_h264()
    if not run.samples:
        stderr_console.print(f"every sample's outputs are already in {config.out} (--resume): nothing to do")
        return None
    placement = place_generate(config, source, len(run.samples), run.size)
    for sample in run.samples:  # each job's own steps and frames against the plan (sp, pp, cfg)
        if sample.params is not None:
            family_module(source.family).check_job(placement.plan, sample.params)

    # 2. Run; the manifest gets a line as each sample's files land, so even a crashed run says what it finished.
    manifest = Path(config.out) / "manifest.jsonl"
    jobs = {index: info["job"] for index, info in run.info.items() if "job" in info}

    def log_files(event) -> None:
        if isinstance(event, FilesWritten) and not placement.torchrun:
            media.append_manifest(manifest, event.sample, event.files, jobs.get(event.sample))

    job = GenerateJob(config, source, placement.dtype, placement.plan, tuple(run.samples), run.targets, run.inputs,
                      str(manifest) if placement.torchrun else None, jobs, run.size)
    try:
        result = run_with_display(job, placement, len(run.samples), config.run.verbose, decode=True,
                                  listener=log_files)
    finally:
        # Finished files stay; a rank stopped mid-write may have left a hidden temporary: never a partial file.
        media.remove_temporaries(Path(config.out))
    if result is None:
        return None
    return _report(config, placement, source, run, result)


def place_generate(config: GenerateConfig, source: ModelSource, num_samples: int, size: tuple[int, int, int]):
    """Where the run goes: --gpus (default: every visible GPU, or one CPU rank), and the plan, which `auto`
    chooses from the job and the machine and explains in one line."""
    from vidpipe.parallel.auto import choose_plan

    family = family_module(source.family)
    guidance = family.uses_guidance(config)
    run = config.run
    if run.gpus is None and not under_torchrun():
        device_type = resolve_device_type(run.device, 1)
        run = replace(run, gpus=cuda_device_count() if device_type == "cuda" else DEFAULT_GPUS)
    if run.strategy == AUTO:
        world_size = int(os.environ["WORLD_SIZE"]) if under_torchrun() else run.gpus
        device_type = resolve_device_type(run.device, world_size, under_torchrun())
        dtype_bytes = 2 if resolve_dtype(run.dtype, device_type) in ("fp16", "bf16") else 4
        model_size = family.model_size(source, dtype_bytes)
        choice = choose_plan(world_size, num_samples, config.steps, *size, guidance, device_type, model_size,
                             switch=family.expert_switch(source, config.steps))
        stderr_console.print(f"auto -> {choice.plan.name}: {choice.reason}", markup=False, highlight=False)
        run = replace(run, strategy=choice.plan.name)
    frames = size[0] if source.family == "svd" else None  # sp splits Wan's tokens, not its frames
    return place(run, config.steps, default_gpus=DEFAULT_GPUS, frames=frames, guidance=guidance)


def _report(config, placement, source, run: RunPlan, result) -> dict:
    spec = placement.spec
    tl = timeline(result["records"])
    rows = {row["index"]: row for row in result["rows"]}
    samples, size = run.samples, run.size
    job_fields = family_module(source.family).job_fields(source)  # a job file's samples: their own options
    report = run_report(
        "generate", config.model, placement.plan.name, placement.plan, spec, placement.dtype, config.steps,
        [s.seed for s in samples], config.warmup_samples, result["records"],
        expert_switch=family_module(source.family).expert_switch(source, config.steps),
        model_source={"kind": source.kind, "path": str(source.path), "name": source.name},
        frames=size[0], height=size[1], width=size[2],
    )
    report["samples"] = [
        {"index": s.index, **run.info[s.index], "seed": s.seed,
         "files": rows[s.index]["files"], "latency_s": tl.latency_s[s.index],
         "finished_at_s": tl.completion_s[s.index], "decode_s": rows[s.index]["decode_s"],
         "decoded_on_rank": rows[s.index]["rank"], "decoded_on_ranks": rows[s.index]["decoded_on_ranks"],
         **({"steps": s.params.steps, **{name: getattr(s.params, name) for name in job_fields}}
            if s.params is not None else {})}
        for s in samples
    ]
    if any("job" in info for info in run.info.values()):  # a job file: results keyed by its ids
        report["jobs"] = {}
        for row in report["samples"]:
            report["jobs"].setdefault(row["job"], []).append(row["index"])
    stderr_console.print(assignment_table(report))
    stderr_console.print(summary_table(report))
    stderr_console.print(files_table(report))
    write_json(report, config.json_path)
    return report


def files_table(report: dict):
    from rich.table import Table

    table = Table(title="Files written")
    for column in ("sample", "seed", "latency s", "files"):
        table.add_column(column, justify="left" if column == "files" else "right")
    for row in report["samples"]:
        table.add_row(str(row["index"]), str(row["seed"]), f"{row['latency_s']:.2f}", "\n".join(row["files"]))
    return table
