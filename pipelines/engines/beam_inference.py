"""Beam's Parquet file pipeline (`BeamEngine.map_parquet`): `Create(files) | Reshuffle |
RunInference(file model handler)`. The handler's model is the stage's batch function (built once
per worker process and shared by its threads); an "example" is one (input, output) file job, run
whole through `distributed.run_file_job`, so the model sees the batches the local engine makes.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.engines.distributed import BatchFn, WriteFn, run_file_job

Job = tuple[int, str, str]  # (index, input path, output path)


class FileModelHandler(ModelHandler[Job, PredictionResult, BatchFn]):
    """RunInference handler whose examples are file jobs; one file per inference batch."""

    def __init__(self, make_fn: Callable[[], BatchFn], write_fn: WriteFn, columns: list[str]):
        self.make_fn, self.write_fn, self.columns = make_fn, write_fn, columns

    def load_model(self) -> BatchFn:
        return self.make_fn()

    def run_inference(self, batch: Sequence[Job], model: BatchFn, inference_args: dict | None = None
                      ) -> Iterable[PredictionResult]:
        return [PredictionResult(job, run_file_job(model, self.write_fn, job[1], job[2], self.columns)) for job in batch]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}


class _StoreResult:
    """DoFn body: a job's result, pickled to the scratch folder under the job's index."""

    def __init__(self, scratch: str):
        self.scratch = scratch

    def __call__(self, result: PredictionResult) -> None:
        from pipelines.engines.beam_files import write_blob

        write_blob(f"{self.scratch}/{result.example[0]:08d}.pkl", pickle.dumps(result.inference))


def file_inference_pipeline(p: Any, jobs: list[tuple[str, str]], columns: list[str], make_fn: Callable[[], BatchFn],
                            write_fn: WriteFn, scratch: str) -> None:
    """Add the Create -> Reshuffle -> RunInference -> store transforms for `jobs` to pipeline `p`."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference

    _ = (p | "Files" >> beam.Create([(n, i, o) for n, (i, o) in enumerate(jobs)], reshuffle=False)
         | "Spread" >> beam.Reshuffle()
         | "Infer" >> RunInference(FileModelHandler(make_fn, write_fn, columns))
         | "Store" >> beam.Map(_StoreResult(scratch)))
