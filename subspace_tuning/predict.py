"""GLUE test-set predictions of a completed run: the leaderboard files of gluebenchmark.com and their zip.

    python -m subspace_tuning.predict outputs/<experiment>/<model>/rte/<method>/<rank>/<mpc>/seed<n>
    python -m subspace_tuning.predict <run folder> --data-dir ../shared/glue --out submission

The model is rebuilt from the run folder as ``subspace_tuning.export`` does (the pretrained backbone, the trained
parameters; the model the run ended with, which its last evaluation scored), the task's test split is read from
the GLUE TSVs (``--data-dir``, default the run's ``task.data_dir``; without one, the Hugging Face Hub) and every
row is predicted. Each split becomes the file the GLUE site expects (``RTE.tsv``; MNLI: ``MNLI-m.tsv``,
``MNLI-mm.tsv`` and, where the diagnostic set is present, ``AX.tsv``), with the header ``index<TAB>prediction``,
the test file's index and the label as the GLUE files write it (``entailment`` / ``not_entailment``, ``0`` / ``1``;
STS-B: a score in [0, 5]). ``glue_submission.zip`` then holds every leaderboard file in the output folder, so
predicting the run of each task into one ``--out`` folder builds the whole submission.

Options: ``--out DIR`` (default ``<run folder>/glue_test``; this task's files in it are replaced), ``--data-dir DIR``
(a folder of GLUE TSVs with the test files). Only completed runs are predicted.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import ArgumentParser, fail
from .errors import SubspaceTuningError

if TYPE_CHECKING:  # torch and the data stack are imported where they are used: --help answers at once
    import numpy as np
    import torch
    from omegaconf import DictConfig

    from .data import TestExamples

ZIP_NAME = "glue_submission.zip"
STSB_RANGE = (0.0, 5.0)  # the GLUE STS-B score range; the leaderboard takes scores inside it


class PredictError(SubspaceTuningError):
    """The test predictions cannot be made or written."""


def predict_split(cfg: DictConfig, tokenizer: Any, model: torch.nn.Module, examples: TestExamples) -> np.ndarray:
    """Class ids (or the regression output) of every row of ``examples``, in file order."""
    import numpy as np
    import torch
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from .data import encode, model_inputs
    from .metrics import predictions_from_logits

    rows = model_inputs(Dataset.from_dict(encode(examples.texts, tokenizer, int(cfg.data.max_length))), cfg.model)
    loader = DataLoader(rows, batch_size=int(cfg.train.eval_batch_size), collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = np.concatenate([model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
                                 for batch in loader])
    if not np.isfinite(logits).all():
        raise PredictError(f"the model predicts non-finite values (NaN or infinity) on "
                           f"{int((~np.isfinite(logits)).any(-1).sum())} of {len(logits)} test rows; nothing was "
                           f"written")
    return predictions_from_logits(logits)


def leaderboard_lines(cfg: DictConfig, examples: TestExamples, predictions: np.ndarray) -> str:
    """The leaderboard file: ``index<TAB>prediction`` rows, labels as the task's TSVs name them, STS-B clipped."""
    from .export import label_names

    if int(cfg.task.num_labels) == 1:  # regression (STS-B)
        values = [f"{min(max(float(p), STSB_RANGE[0]), STSB_RANGE[1]):.3f}" for p in predictions]
    else:
        names = label_names(cfg) or {}
        values = [names.get(int(p), str(int(p))) for p in predictions]
    return "index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(examples.indices, values, strict=True))


def write_zip(out: Path) -> Path:
    """``out/glue_submission.zip`` holding every leaderboard file in ``out``, at the top level as GLUE wants."""
    from .data import GLUE_TEST_SPLITS
    from .runio import atomic_write_bytes

    names = sorted({split.submission for splits in GLUE_TEST_SPLITS.values() for split in splits})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            if (out / name).is_file():
                archive.write(out / name, arcname=name)
    path = out / ZIP_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def predict_run(run: str | Path, out: str | Path | None = None,
                data_dir: str | Path | None = None) -> tuple[list[Path], Path]:
    """Write the leaderboard files of ``run``'s test split(s) to ``out`` (default ``<run>/glue_test``) and the zip;
    return (the files written, the zip)."""
    import torch

    from .data import read_test_examples
    from .export import rebuild
    from .runio import atomic_write_text, ensure_writable_dir

    run = Path(run)
    out = Path(out) if out is not None else run / "glue_test"
    cfg, tokenizer, model, _ = rebuild(run)  # completed run, its files present, finite trained tensors
    examples = read_test_examples(cfg.task, data_dir)
    if torch.cuda.is_available() and not cfg.train.get("cpu"):
        model = model.cuda()
    predictions = {split: predict_split(cfg, tokenizer, model, rows) for split, rows in examples.items()}
    ensure_writable_dir(out)
    written = []
    for split, rows in examples.items():
        atomic_write_text(out / split.submission, leaderboard_lines(cfg, rows, predictions[split]))
        written.append(out / split.submission)
    return written, write_zip(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.predict", __doc__)
    parser.add_argument("run", metavar="RUN_FOLDER", type=Path, help="the folder of a completed run of a GLUE task")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="where to write the leaderboard files and the zip (default <run folder>/glue_test)")
    parser.add_argument("--data-dir", metavar="GLUE_DIR", type=Path,
                        help="a folder of GLUE TSVs with the test files (default the run's task.data_dir; none: "
                             "the Hugging Face Hub)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; every error is one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    from transformers.utils import logging

    # The backbone's load report calls the head 'newly initialized': it is, until the run's trained head replaces it.
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        written, archive = predict_run(args.run, args.out, args.data_dir)
    except SubspaceTuningError as err:
        fail(err)
    for path in written:
        print(f"{path} ({sum(1 for _ in path.open()) - 1} rows)")
    print(f"{archive}: {', '.join(zipfile.ZipFile(archive).namelist())}")


if __name__ == "__main__":
    main()
