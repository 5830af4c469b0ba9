"""The peer side of the end-to-end benchmark: one fine-tuning job through Hugging Face ``Trainer`` + PEFT.

``python -m subspace_tuning.bench.e2e_peer <job.json> <result.json>`` runs the job that ``bench/e2e.py`` resolved from
the same Hydra configuration our ``train.py`` runs, so both sides agree on every setting: the same training rows
(``data.pick_rows``), dev rows and order (``data.length_sorted``), tokenizer, maximum length, model and head
dropout (``models``), learning rate, warmup steps, linear decay, weight decay, gradient clipping, batch sizes,
epochs, seed, torch threads and metric (``metrics``). The PEFT config is ``bench.peft_rows.peft_config``'s, built by
the parent and passed as a dict, so this process imports no more of our package than the data, model and metric
helpers a Trainer user would write themselves. It trains as a Trainer user does (evaluation each epoch, the adapter
saved at the end) and writes the wall-clock times (``time.time()``, comparable with the parent's) of its phases.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# imports inside main(): the start-up they cost is part of what the benchmark measures, after the first time stamp


def select_rows(task_cfg: Any, max_train: int | None, max_eval: int | None, tokenizer: Any, max_length: int,
                drop_token_types: bool) -> tuple[Any, Any]:
    """(training rows, first evaluation split's rows), tokenised: the rows and order our runner uses
    (``data.pick_rows``, ``data.length_sorted``), and only those rows are tokenised, as a Trainer user would."""
    from omegaconf import OmegaConf

    from ..data import length_sorted, pick_rows, read_examples, tokenize

    data_cfg = OmegaConf.create({"max_train_samples": max_train, "max_eval_samples": max_eval})
    train, evals = pick_rows(read_examples(task_cfg), task_cfg, data_cfg)
    tokenised = tokenize({"train": train, "dev": next(iter(evals.values()))}, tokenizer, max_length)
    if drop_token_types:  # as our runner: RoBERTa / DeBERTaV3 have no segment embeddings
        tokenised = tokenised.remove_columns("token_type_ids")
    return tokenised["train"], length_sorted(tokenised["dev"])


def main(job_path: str, result_path: str) -> None:
    marks: dict[str, Any] = {"process": time.time()}
    import torch
    from omegaconf import OmegaConf
    from peft import get_peft_config, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    from ..metrics import compute_metrics, predictions_from_logits
    from ..models import build_model, load_tokenizer

    marks["imported"] = time.time()
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(int(job["threads"]))
    model_cfg, task_cfg = OmegaConf.create(job["model"]), OmegaConf.create(job["task"])
    metric_names = list(task_cfg.metrics)
    tokenizer = load_tokenizer(model_cfg)
    train_rows, dev_rows = select_rows(task_cfg, job["max_train_samples"], job["max_eval_samples"], tokenizer,
                                       int(job["max_length"]), int(model_cfg.arch.get("type_vocab_size", 2)) < 2)
    marks["data"] = time.time()
    set_seed(int(job["seed"]))  # the new head's init: our runner seeds (accelerate's set_seed) before building it
    model = get_peft_model(build_model(model_cfg, int(task_cfg.num_labels), tokenizer),
                           get_peft_config(job["peft_config"]))
    marks["model"] = time.time()
    evaluations: list[dict[str, Any]] = []

    class Marks(TrainerCallback):
        """Time stamps of the phases; PEFT's AdaLoRA allocates after each optimizer step, gradients still present
        (on_optimizer_step comes before zero_grad; global_step counts from 0 there, as PEFT expects)."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["train_begin"] = time.time()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.setdefault("first_step", time.time())

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if job["adalora"]:
                model.base_model.update_and_allocate(state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["train_end"] = time.time()

    class PeerTrainer(Trainer):
        def get_decay_parameter_names(self, model: Any) -> list[str]:
            """Our runner's rule (docs: README, Training): vectors never decay. PEFT stores some vectors as (n, 1)
            or (1, n) matrices ((IA)3's scales, AdaLoRA's singular values), so count the dimensions above 1."""
            return [name for name, p in model.named_parameters() if sum(size > 1 for size in p.shape) > 1]

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            start = time.time()
            scores = super().evaluate(*args, **kwargs)
            evaluations.append({"seconds": time.time() - start, "step": self.state.global_step,
                                "scores": {m: scores[f"eval_{m}"] for m in metric_names}})
            return scores

    def scores(prediction: Any) -> dict[str, float]:
        return compute_metrics(metric_names, predictions_from_logits(prediction.predictions), prediction.label_ids)

    out = Path(job["output_dir"])
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=int(job["batch_size"]),
        per_device_eval_batch_size=int(job["eval_batch_size"]), num_train_epochs=int(job["epochs"]),
        learning_rate=float(job["lr"]), weight_decay=float(job["weight_decay"]),
        warmup_steps=int(job["warmup_steps"]), lr_scheduler_type="linear", max_grad_norm=float(job["max_grad_norm"]),
        adam_beta1=float(job["betas"][0]), adam_beta2=float(job["betas"][1]), adam_epsilon=float(job["eps"]),
        train_sampling_strategy="group_by_length" if job.get("group_by_length") else "random",
        seed=int(job["seed"]), eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
        report_to="none", dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = PeerTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=dev_rows,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=scores,
                          callbacks=[Marks()])
    trainer.train()
    trainer.save_model(str(out / "adapter"))  # the trained adapter and head, as our runner's trained.safetensors
    marks["saved"] = time.time()
    result = {"marks": marks, "steps": trainer.state.global_step, "evaluations": evaluations,
              "eval_seconds": sum(e["seconds"] for e in evaluations)}
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
