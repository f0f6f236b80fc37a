"""The sweep of `python -m benchmarks.run`: its plans and its sections.

Import after `benchmarks.backend.select` (this module imports Keras).
"""

import os
import time
from dataclasses import asdict, dataclass, field

import keras

from benchmarks import backend, baselines, measure, models, report

REFERENCE_DEPTH = models.REFERENCE_DEPTH
BASELINE_TOLERANCE = 1e-5


@dataclass
class Plan:
    """What one run measures."""

    name: str
    steps_sweep: list  # T values at reference_depth
    depths: list  # depth sweep ...
    depth_sweep_steps: list  # ... at these T
    batch: int
    # (depth, T, batch, variants) measured besides the sweeps
    extra_points: list = field(default_factory=list)
    warmup: int = 2
    rounds: int = 5
    new_length_base: tuple = (REFERENCE_DEPTH, 16, 256)  # (depth, T, batch)
    fit_variants: list = field(default_factory=list)
    fit_steps: int = 16
    memory_variants: list = field(default_factory=list)
    memory_steps: list = field(default_factory=list)
    first_step_limit_s: float = measure.FIRST_STEP_LIMIT_S
    reference_depth: int = REFERENCE_DEPTH  # of the T sweep and memory


# The batch-1024 target: looped against the plain cell at depth 32.
LARGE_BATCH_POINT = (REFERENCE_DEPTH, 64, 1024, ["looped", "straightforward"])

PLANS = {
    "full": Plan(
        name="full",
        steps_sweep=[16, 64, 256, 1024],
        depths=[4, 32],
        depth_sweep_steps=[16, 64],
        batch=256,
        extra_points=[LARGE_BATCH_POINT],
        warmup=2,
        rounds=7,
        new_length_base=(REFERENCE_DEPTH, 64, 256),
        fit_variants=["looped", "looped_xla", "straightforward"],
        fit_steps=64,
        memory_variants=["looped", "straightforward", "gru_stack"],
        memory_steps=[16, 64, 256, 1024],
    ),
    "quick": Plan(
        name="quick",
        steps_sweep=[16, 64],
        depths=[4, 32],
        depth_sweep_steps=[16],
        batch=256,
        warmup=2,
        rounds=5,
        new_length_base=(4, 16, 256),
        fit_variants=["looped", "straightforward"],
        fit_steps=16,
        memory_variants=["looped", "straightforward"],
        memory_steps=[16, 64],
        reference_depth=4,  # the T sweep at depth 4, to stay under 5 min
    ),
    # The reference configuration only: what its targets compare
    # (first and steady step at T 16 and 64, batch 1024, a new length), in
    # about 8 minutes on 2 cores; for a short run on a lent GPU.
    "reference": Plan(
        name="reference",
        steps_sweep=[16, 64],
        depths=[REFERENCE_DEPTH],
        depth_sweep_steps=[16],
        batch=256,
        extra_points=[LARGE_BATCH_POINT],
        warmup=2,
        rounds=5,
        new_length_base=(REFERENCE_DEPTH, 64, 256),
        fit_variants=["looped", "straightforward"],
        fit_steps=64,
    ),
    # For developing the suite on a busy machine; hidden from --help.
    "tiny": Plan(
        name="tiny",
        steps_sweep=[4, 8],
        depths=[2, 3],
        depth_sweep_steps=[4],
        batch=16,
        warmup=1,
        rounds=2,
        new_length_base=(2, 4, 16),
        fit_variants=["looped"],
        fit_steps=4,
        memory_variants=["looped"],
        memory_steps=[4],
        first_step_limit_s=60.0,
        reference_depth=2,
    ),
}


def plan_points(plan, variants):
    """The (depth, T, batch, variants) groups, each measured interleaved."""
    points = [(plan.reference_depth, t, plan.batch) for t in plan.steps_sweep]
    for depth in plan.depths:
        for steps in plan.depth_sweep_steps:
            if (depth, steps, plan.batch) not in points:
                points.append((depth, steps, plan.batch))
    groups = [(d, t, b, list(variants)) for d, t, b in points]
    for depth, steps, batch, names in plan.extra_points:
        kept = [v for v in names if v in variants]
        if kept:
            groups.append((depth, steps, batch, kept))
    return groups


class Sweep:
    """The sections of one run, writing into one `results` dict."""

    def __init__(self, plan, variants, json_path):
        self.plan = plan
        self.variants = variants
        self.json_path = json_path
        self.results = {
            "machine": measure.machine_facts(),
            "config": self.config(),
            "flop_formula": models.FLOP_FORMULA,
        }

    def save(self):
        report.write_json(self.results, self.json_path)

    def config(self):
        plan = self.plan
        return {
            "plan": plan.name,
            "variants": self.variants,
            "variant_descriptions": {
                v: models.VARIANTS[v].description for v in self.variants
            },
            "units": models.UNITS,
            "input_width": models.INPUT_WIDTH,
            "memory": [models.MEMORY_DEPTH, models.MEMORY_WIDTH],
            "optimizer": "RMSprop",
            "loss": "mse",
            "unroll_max_steps": models.UNROLL_MAX_STEPS,
            "first_step_limit_s": plan.first_step_limit_s,
            "plan_details": asdict(plan),
            "jit_note": (
                None
                if backend.is_tensorflow()
                else "JAX: every variant is jitted; looped and looped_xla "
                "are the same model."
            ),
        }

    def baseline_check(self):
        log = measure.log
        log("== baseline check (straightforward vs SuperloopCell, same "
            "weights)")
        try:
            difference = baselines.check_against_project_cell()
        except Exception as error:  # the package is edited concurrently
            note = measure.error_note(error)
            self.results["baseline_check"] = {"note": note}
            log(f"  {note}")
            return
        matches = difference < BASELINE_TOLERANCE
        self.results["baseline_check"] = {
            "max_abs_difference": difference,
            "matches": matches,
        }
        verdict = (
            "same function" if matches else "MISMATCH: the baseline differs"
        )
        log(f"  max |difference| of outputs: {difference:.2e} ({verdict})")

    def train_steps(self):
        plan, results = self.plan, self.results
        results["points"] = []
        results["new_length"] = []
        timed_out = {}
        for depth, steps, batch, names in plan_points(plan, self.variants):
            measure.log(f"== depth {depth}, T {steps}, batch {batch}")
            rows, live = measure.run_group(
                depth,
                steps,
                batch,
                names,
                warmup=plan.warmup,
                rounds=plan.rounds,
                limit_s=plan.first_step_limit_s,
                timed_out=timed_out,
            )
            results["points"].extend(rows)
            if (depth, steps, batch) == tuple(plan.new_length_base) and live:
                measure.log(
                    f"== new lengths after warm-up at T {steps} "
                    "(train_on_batch)"
                )
                results["new_length"] = measure.measure_new_lengths(
                    live, rows, steps, batch
                )
            del live
            keras.backend.clear_session()
            self.save()

    def fit(self):
        plan = self.plan
        self.results["fit"] = []
        if not backend.is_tensorflow():
            measure.log("== model.fit on tf.data: TensorFlow backend only, "
                        "skipped")
            return
        depth, _, batch = plan.new_length_base
        for variant in [v for v in plan.fit_variants if v in self.variants]:
            measure.log(
                f"== model.fit on padded tf.data, {variant}, T {plan.fit_steps}"
            )
            try:
                record = measure.measure_fit(
                    variant, depth, plan.fit_steps, batch,
                    plan.first_step_limit_s,
                )
                measure.log(
                    f"  traces {record['traces_first_batch']} in the first "
                    f"batch, {record['retraces_later']} later; first batch "
                    f"{record['first_batch_s']:.2f} s, steady "
                    f"{record['steady_ms']:.1f} ms (fixed shapes "
                    f"{record['fixed_shape_steady_ms']:.1f} ms), new T' "
                    f"per-timestep x{record['new_first_ratio']:.2f}"
                )
            except Exception as error:  # report and go on with the others
                record = {"variant": variant,
                          "note": measure.error_note(error)}
                measure.log(f"  {record['note']}")
            self.results["fit"].append(record)
        keras.backend.clear_session()

    def memory(self):
        plan = self.plan
        fmt = report.format_value
        self.results["memory"] = []
        for variant in [v for v in plan.memory_variants if v in self.variants]:
            for steps in plan.memory_steps:
                if (models.VARIANTS[variant].fixed_steps
                        and steps > models.UNROLL_MAX_STEPS):
                    continue
                measure.log(f"== peak RSS: {variant}, T {steps} (subprocess)")
                record = measure.measure_memory(
                    variant, plan.reference_depth, steps, plan.batch
                )
                self.results["memory"].append(record)
                measure.log(
                    f"  peak {fmt(record.get('peak_mb'), 0)} MB, delta "
                    f"{fmt(record.get('delta_mb'), 0)} MB "
                    f"{record.get('note', '')}"
                )

    def run(self, out):
        results = self.results
        started = time.perf_counter()
        measure.log("== machine")
        for key, value in results["machine"].items():
            measure.log(f"  {key}: {value}")
        self.baseline_check()
        measure.log(
            f"== GEMM reference ({measure.GEMM_SIZE}x{measure.GEMM_SIZE} "
            "float32, keras.ops)"
        )
        results["gemm"] = {"start": measure.measure_gemm()}
        measure.log(
            f"  {results['gemm']['start']['gflops_best']:.1f} GFLOP/s (best)"
        )
        measure.log("== process warm-up")
        results["warm_up"] = measure.warm_up_process()
        measure.log(f"  {results['warm_up']['seconds']:.1f} s")
        for variant, note in results["warm_up"]["errors"].items():
            measure.log(f"  {variant}: {note}")
        self.save()

        self.train_steps()
        self.fit()
        self.save()
        self.memory()
        self.save()

        results["gemm"]["end"] = measure.measure_gemm()
        gemm_gflops = max(
            results["gemm"]["start"]["gflops_best"],
            results["gemm"]["end"]["gflops_best"],
        )
        results["gemm"]["reference_gflops"] = gemm_gflops
        for row in results["points"]:
            row["percent_of_gemm"] = report.percent_of_gemm(
                gemm_gflops
            )(row)
        results["machine"]["load_average_at_end"] = measure.load_average()
        results["elapsed_s"] = time.perf_counter() - started
        self.save()
        plot_path = report.plot(
            results, os.path.join(out, "benchmarks.png")
        )
        report.print_summary(results, plot_path)
        measure.log(f"results: {self.json_path}")
