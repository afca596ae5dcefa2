"""The recipe: one validated pydantic model, loaded from YAML at the edge and passed inward.

Every field is documented where it is declared; combinations are checked in one place
(``Recipe._check``) with a message that says what to change. ``eto recipe-help`` prints the
field documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eto_core.dpo import DPOSettings
from eto_core.modeling import TinyModelConfig
from eto_core.policy import GenerationSettings
from eto_core.pretrain import PretrainSettings
from eto_core.sft import SFTSettings


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvSettings(_Strict):
    name: str = Field("tidy", description="Registered environment name (see environments/registry.py).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments of the environment.")
    one_shot: bool = Field(True, description="Put the benchmark's one-shot example into every prompt (ETO does).")
    step_timeout_s: float | None = Field(
        120.0,
        gt=0,
        description="Seconds one reset or step may take before the environment counts as hung: it is closed and "
        "replaced and the episode restarted (empty: wait forever).",
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="Restarts of an episode on a fresh environment after a crash or hang; after that it is "
        "recorded as 'env_error' with the fault, never counted as a model failure.",
    )
    concurrent_steps: bool = Field(
        False,
        description="Step the live episodes' environments in parallel threads after each batched generation. "
        "Helps where a step blocks outside Python (ScienceWorld's JVM, a remote env); pure-Python envs "
        "gain nothing under the GIL. Trajectories are the same either way.",
    )


class DataSettings(_Strict):
    train_tasks: int = Field(
        200, ge=1, description="Training tasks used for expert SFT data and for exploration (first N of 'train')."
    )
    explore_tasks: int | None = Field(
        None, ge=1, description="Training tasks explored each iteration (first N of train_tasks); empty: all."
    )
    seen_tasks: int = Field(50, ge=1, description="Evaluation tasks from the 'seen' split.")
    unseen_tasks: int = Field(50, ge=1, description="Evaluation tasks from the 'unseen' split.")
    expert_file: str | None = Field(
        None,
        description="Optional expert trajectories in ETO's published JSON format instead of the env's expert. "
        "Each record's id becomes our task id (WebShop: goal index; ScienceWorld: '<task number>_<variation>' "
        "through expert_id_file; ALFWorld: the record's game_file, else line <id> of expert_id_file) and its "
        "prompt is re-rendered as the environment gives that task, so it pairs with the explored episodes "
        "(docs/pipeline.md).",
    )
    expert_id_file: str | None = Field(
        None,
        description="ETO's id table for expert_file: ScienceWorld: sciworld_taskname2id.json; ALFWorld: a game "
        "list, one '<task folder>/<trial>' per line, line n (from 0) for id n (alfworld_gamefile_id.txt's "
        "format), needed only for records without a game_file. WebShop and records whose ids already are "
        "our task ids need none.",
    )
    one_shot_in_training: bool = Field(
        True,
        description="Keep env.one_shot's example in the prompts SFT and DPO train on (expert trajectories, "
        "pairs). false follows ETO: explore and evaluate with the example, train without it.",
    )
    on_split_overlap: Literal["error", "warn"] = Field(
        "error",
        description="What to do when seen/unseen task ids are also training task ids: 'error' refuses to "
        "train; 'warn' logs a loud warning and goes on (results are then not held out).",
    )


class ModelSettings(_Strict):
    path: str | None = Field(
        None,
        description="Hugging Face model id or local folder. Empty: build the tiny default model from scratch.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Size of the from-scratch model.")
    tokenizer_corpus_tasks: int = Field(
        300, ge=1, description="Training tasks whose expert episodes train the tiny model's tokenizer."
    )
    pretrain: PretrainSettings = Field(
        default_factory=PretrainSettings,
        description="Language-model pre-training of the tiny model on the expert corpus (all tokens).",
    )
    chat_template: str | None = Field(
        None, description="Override the tokenizer's chat template (Jinja; each message must render on its own, unchanged by later turns)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off unless you trust it).")


class DPOIteration(_Strict):
    """Per-iteration overrides of the DPO settings (ETO: iteration 1 beta 0.1, later 0.5)."""

    beta: float | None = Field(None, gt=0)
    learning_rate: float | None = Field(None, gt=0)
    num_train_epochs: float | None = Field(None, gt=0)


class StorageSettings(_Strict):
    root: str = Field(".eto/artifacts", description="Artifact root: a local path, file:// or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (e.g. http://127.0.0.1:8333 for SeaweedFS).")
    s3_region: str = Field("us-east-1", description="S3 region name.")


class TrackingSettings(_Strict):
    mlflow_uri: str = Field("sqlite:///.eto/mlflow.db", description="MLflow tracking URI.")
    experiment: str = Field("eto", description="MLflow experiment name.")
    registered_model: str | None = Field(
        None, description="Registered model name; default 'eto-<recipe name>'."
    )
    log_models: bool = Field(True, description="Log each stage's model folder and register it.")


class PairSettings(_Strict):
    """How exploration is turned into preference pairs (beyond the paper's one greedy sample)."""

    samples_per_task: int = Field(
        1, ge=1, description="Trajectories explored per training task (k); above 1 needs explore.temperature > 0."
    )
    self_pairs: bool = Field(
        False, description="Also pair each task's best sample against its worst when their rewards differ."
    )
    level: Literal["trajectory", "step", "both"] = Field(
        "trajectory",
        description="'trajectory': ETO's pairs of whole trajectories; 'step': continuations from the same "
        "expert prefix (the expert's first t turns replayed in the environment, then the policy goes on; "
        "its continuation against the expert's); 'both': the two together, as IPR trains.",
    )
    step_points: int = Field(
        2, ge=1, description="Step-level pairs: branch points per expert trajectory, spread evenly over its turns."
    )
    cut_rejected: bool = Field(
        True,
        description="Cut the rejected trajectory at the expert's rounds + pair_cut_extra_rounds (ETO's WebShop "
        "and ScienceWorld script). false: keep it whole, as ETO's ALFWorld script does.",
    )
    skip_context_overflow: bool = Field(
        False,
        description="Make no pair of an explored episode that ended because the conversation outgrew the "
        "context (terminate_reason max_length), as ETO skips an episode without a reward. false: it is "
        "compared by the reward it reached, like any other.",
    )


class SelectionSettings(_Strict):
    """Choosing the iteration to keep, and early stopping, on a split nobody trains on or reports."""

    split: Literal["dev", "train_holdout"] | None = Field(
        None,
        description="'dev': the environment's dev split (ScienceWorld has one); 'train_holdout': training tasks "
        "after the first data.train_tasks (never trained on); empty: no selection, every iteration runs and the "
        "champion is chosen on seen (optimistic).",
    )
    tasks: int = Field(20, ge=1, description="Tasks of the selection split scored after SFT and every iteration.")
    metric: Literal["avg_reward", "success_rate"] = Field("avg_reward", description="Score compared across iterations.")
    patience: int = Field(1, ge=1, description="Stop after this many iterations in a row without a new best.")
    min_delta: float = Field(0.0, ge=0.0, description="A new best must beat the old by more than this.")


class BaselineSettings(_Strict):
    """The cheaper alternatives ETO is measured against (`eto baseline`)."""

    best_of_n: int = Field(8, ge=1, description="Best-of-N: samples per evaluation task; the best reward counts.")
    rft_samples: int = Field(4, ge=1, description="RFT: samples per training task; the successes join the SFT data.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of Best-of-N and RFT exploration.")
    rft_min_reward: float | None = Field(
        None, ge=0, le=1,
        description="RFT keeps successful trajectories; with a value, also those with at least this reward "
        "(partial credit on graded environments).",
    )


class PolicySettings(_Strict):
    """Which engine writes the agent's turns in exploration and evaluation."""

    backend: Literal["hf", "vllm", "openai"] = Field(
        "hf",
        description="'hf': the stage's model in this process (CPU or GPU); 'vllm': the stage's model in an "
        "in-process vLLM engine (GPU; pip install 'eto[vllm]'); 'openai': an OpenAI-compatible endpoint "
        "(a served model or an API model as a baseline; `eto evaluate` only, since the endpoint, not the "
        "pipeline, decides which model answers).",
    )
    prefix_cache: bool = Field(
        True,
        description="hf backend: encode the prompt prefix every conversation of a batch shares (instruction + "
        "one-shot example) once and reuse its KV cache, instead of re-encoding it for every row at every step.",
    )
    episode_cache: bool = Field(
        True,
        description="hf backend: keep each episode's KV cache from one step to the next, so a step encodes only "
        "the new observation instead of the whole history (memory: the live episodes' caches).",
    )
    shared_prefix_attention: bool = Field(
        True,
        description="hf backend on CPU, with prefix_cache: every decoding step reads the shared prefix's keys/values "
        "once for the whole batch instead of once per row (exact; models with sliding-window or soft-capped "
        "attention keep plain attention).",
    )
    lookup_draft: int = Field(
        4, ge=0, le=16,
        description="hf backend, our decoding loop (with prefix_cache or episode_cache): each forward also checks up "
        "to this many draft tokens looked up in the row's own context and keeps those the model's greedy choices, "
        "or a sampled row's own draws, confirm (prompt-lookup decoding: the same turns, up to float rounding, in "
        "fewer forwards; "
        "0: one token per forward; docs/benchmarks.md, \"Lookup drafts\").",
    )
    base_url: str | None = Field(None, description="openai backend: the endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="openai backend: the served model's name.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai backend: environment variable holding the API key (never logged)."
    )
    timeout_s: float = Field(120.0, gt=0, description="openai backend: seconds per request before a retry.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vllm backend: fraction of GPU memory vLLM may take."
    )

    def key_fields(self) -> dict[str, Any]:
        """What changes the turns a backend writes (part of the rollout cache keys)."""
        if self.backend == "openai":
            return {"backend": self.backend, "base_url": self.base_url, "model": self.model}
        # The prefix cache is the same arithmetic on the same tokens: not a key field.
        return {"backend": self.backend}


class RunnerSettings(_Strict):
    """Where rollout shards run: the pipeline submits each shard as a Prefect task to this runner."""

    kind: Literal["thread", "dask", "ray"] = Field(
        "thread",
        description="'thread': Prefect's thread pool in this process; 'dask': prefect-dask's DaskTaskRunner "
        "(a local cluster, or the scheduler at `address`); 'ray': prefect-ray's RayTaskRunner.",
    )
    workers: int = Field(
        1, ge=1, description="Shards in flight: threads, or the local Dask cluster's worker processes."
    )
    address: str | None = Field(
        None, description="An existing Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001)."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per shard task (default: torch's own choice)."
    )


class Recipe(_Strict):
    name: str = Field("default", description="Recipe name; used in run names and the registered model name.")
    seed: int = Field(0, description="Global seed (model init, data order, sampling).")
    iterations: int = Field(2, ge=0, description="ETO iterations after SFT (explore -> pairs -> DPO -> eval).")
    evaluate_base: bool = Field(
        False,
        description="Also evaluate the starting model before SFT on seen/unseen: the zero-shot row of a pretrained "
        "instruct model (the paper's untrained-model rows). Pointless for the tiny from-scratch model.",
    )
    env: EnvSettings = Field(default_factory=EnvSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    sft: SFTSettings = Field(default_factory=SFTSettings)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    dpo_iterations: list[DPOIteration] = Field(
        default_factory=list,
        description="Overrides per iteration (entry i for iteration i+1; the last entry repeats).",
    )
    explore: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Generation during exploration of training tasks."
    )
    evaluate: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Generation during seen/unseen evaluation."
    )
    pair_cut_extra_rounds: int = Field(
        5, ge=0, description="Cut the failed trajectory at the expert's length plus this many rounds (ETO: 5)."
    )
    pairs: PairSettings = Field(default_factory=PairSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.data.explore_tasks is not None and self.data.explore_tasks > self.data.train_tasks:
            raise ValueError(
                f"data.explore_tasks ({self.data.explore_tasks}) exceeds data.train_tasks "
                f"({self.data.train_tasks}): exploration pairs need expert trajectories of the same tasks."
            )
        if len(self.dpo_iterations) > max(self.iterations, 1) and self.iterations > 0:
            raise ValueError(
                f"dpo_iterations has {len(self.dpo_iterations)} entries but iterations is {self.iterations}; "
                "remove the extra entries or raise iterations."
            )
        if self.model.path is None and self.model.tiny.max_position_embeddings < self.explore.max_context_tokens:
            raise ValueError(
                "explore.max_context_tokens exceeds model.tiny.max_position_embeddings; lower the first or "
                "raise the second."
            )
        if self.pairs.samples_per_task > 1 and self.explore.temperature == 0:
            raise ValueError(
                f"pairs.samples_per_task is {self.pairs.samples_per_task} but explore.temperature is 0: greedy "
                "samples are identical; set explore.temperature (e.g. 0.7) or samples_per_task: 1."
            )
        if not self.data.one_shot_in_training and self.env.one_shot and self.pairs.level != "trajectory":
            raise ValueError(
                f"data.one_shot_in_training is false but pairs.level is '{self.pairs.level}': step-level "
                "continuations replay expert prefixes in the exploration prompt, which has the one-shot example "
                "the expert data lacks; use pairs.level: trajectory or data.one_shot_in_training: true."
            )
        if self.policy.backend == "openai" and not (self.policy.base_url and self.policy.model):
            raise ValueError("policy.backend is 'openai' but policy.base_url or policy.model is empty; set both.")
        return self

    def dpo_for_iteration(self, iteration: int) -> DPOSettings:
        """DPO settings of iteration ``iteration`` (1-based), with its overrides applied."""
        if iteration < 1:
            raise ValueError("DPO iterations are numbered from 1")
        if not self.dpo_iterations:
            return self.dpo
        override = self.dpo_iterations[min(iteration, len(self.dpo_iterations)) - 1]
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.dpo.model_copy(update=changes)

    @property
    def model_name(self) -> str:
        return self.tracking.registered_model or f"eto-{self.name}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, validate; errors name file and field."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found; pass --config with a path such as recipes/default.yaml.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of settings, got {type(raw).__name__}.")
    keys = []
    for item in overrides or []:
        keys.append(_apply_override(raw, item, path))
    _trim_dpo_iterations(raw, keys)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(recipe)"
            hint = " (unknown key: check its spelling against `eto recipe-help`)" if err["type"] == "extra_forbidden" else ""
            problems.append(f"  {loc}: {err['msg']}{hint}")
        raise RecipeError(f"{path}: invalid recipe:\n" + "\n".join(problems)) from None


def _trim_dpo_iterations(raw: dict[str, Any], override_keys: list[str]) -> None:
    """Drop the recipe's dpo_iterations entries beyond an iterations count lowered by an override.

    A recipe written for two iterations may be run for one (`--iterations 1`): the entries for
    iterations that will not run are unused, not a mistake, and each iteration's settings (hence
    its cache keys) are unchanged by the cut. A list given on the command line itself is left for
    the recipe check to judge."""
    entries = raw.get("dpo_iterations")
    iterations = raw.get("iterations")
    if ("iterations" not in override_keys or "dpo_iterations" in override_keys or not isinstance(entries, list)
            or not isinstance(iterations, int) or iterations < 1):
        return
    raw["dpo_iterations"] = entries[:iterations]


def _apply_override(raw: dict[str, Any], item: str, path: Path) -> str:
    """Set one ``key.sub=value`` override in ``raw``; returns its key."""
    if "=" not in item:
        raise RecipeError(f"{path}: override '{item}' must look like key.sub=value, e.g. --set dpo.beta=0.2")
    key, value = item.split("=", 1)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{path}: override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)
    return key


def describe_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """One line per recipe field with its type, default and documentation (for `eto recipe-help`)."""
    lines: list[str] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if info.description:
                lines.append(f"{key}: {info.description}")
            lines.extend(describe_fields(annotation, prefix=f"{key}."))
            continue
        default = "" if info.is_required() else f" [default: {info.get_default(call_default_factory=True)!r}]"
        lines.append(f"{key}: {info.description or ''}{default}")
    return lines
