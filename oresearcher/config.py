"""The one config system: typed settings loaded from `configs/*.yaml`, plus `key.path=value` overrides.

    cfg = load_config("configs/tiny.yaml", ["research.search.backend=serper"])

Every section is a pydantic model with `extra="forbid"`, so a typo is an error, and every error names the
offending key (`research.search.backend: Input should be 'local', 'searxng' or 'serper'`). Flows take the
config path and overrides as Prefect parameters, so the UI, the CLI and schedules pass the same thing.
Secrets are never values here: a config names the environment variable that holds an API key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config file or override that does not fit the settings schema; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_cache_dir() -> Path:
    """Where derived, rebuildable files go unless a config says otherwise: `$ORESEARCHER_CACHE`, read when asked."""
    return Path(os.environ.get("ORESEARCHER_CACHE") or "~/.cache/oresearcher").expanduser()


class PathsConfig(Section):
    data_dir: Path = Field(Path("data"), description="DVC-tracked tree: seeds, tape, traces (relative to the repo)")
    checkpoints_dir: Path = Field(Path("checkpoints"), description="training checkpoints, for resuming (the models "
                                                                   "themselves go to the MLflow registry)")
    cache_dir: Path = Field(default_factory=default_cache_dir,
                            description="derived, rebuildable files: converted models, search indexes "
                                        "(default: $ORESEARCHER_CACHE, else ~/.cache/oresearcher)")

    def resolve(self, path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def data(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def cache(self) -> Path:
        return self.resolve(self.cache_dir)

    @property
    def checkpoints(self) -> Path:
        return self.resolve(self.checkpoints_dir)


class ModelConfig(Section):
    """A model and how to call it. Every model call in the project goes through `models.llm.LLMClient`."""

    name: str = Field("smollm2-135m-instruct",
                      description="'smollm2-135m-instruct' (embedded), a Hugging Face id or a local directory")
    backend: Literal["local", "openai", "vllm"] = "local"
    max_context_tokens: int = Field(8192, ge=512)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # generation defaults
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="local/vllm backends; vLLM servers too")
    # openai backend: any OpenAI-compatible endpoint (vLLM server, llama.cpp server, OpenAI)
    base_url: str = "http://127.0.0.1:8000/v1"
    served_name: str | None = Field(None, description="model name sent to the API (default: name)")
    identity: str | None = Field(
        None, description="what identifies this model for the response cache and trace ids (default: "
                          "'<backend>:<served name>', plus the weights' revision for in-process engines; the "
                          "endpoint URL is not part of it, so a restarted or "
                          "proxied teacher is not paid twice). Set it when two endpoints serve different "
                          "models under one name")
    api_key_env: str | None = Field(None, description="env var holding the API key; never the key itself")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_minute: float | None = Field(None, gt=0)
    prefect_concurrency_limit: str | None = Field(
        None, description="openai backend: a Prefect global concurrency limit each request holds a slot of, shared "
                          "by every run that names it (one paid key: `prefect gcl create NAME --limit N` first)")
    # grammar-constrained decoding: each call's output held to the grammar the agent runtime derives for it
    guided: bool = Field(False, description="constrain every call to its decoding grammar (local and vllm backends: "
                                            "always possible; openai: needs grammar_api)")
    grammar_api: Literal["none", "vllm", "llama.cpp"] = Field(
        "none", description="openai backend: how this endpoint takes a grammar: 'vllm' (structured_outputs in the "
                            "request body), 'llama.cpp' (GBNF in 'grammar'), 'none' (it cannot: calls run unguided)")
    # local backend: continuous batching (rows join and leave between decode steps)
    max_batch: int = Field(8, ge=1, description="rows decoded together (local); requests grouped (vllm)")
    batch_window_ms: float = Field(25.0, ge=0, description="vllm backend: how long a group waits for more requests")
    prefix_cache_tokens: int = Field(32768, ge=0, description="local backend: tokens of key/value cache kept for "
                                                              "reuse by prompts that extend them (0: off)")
    # pricing for the cost ledger, USD per million tokens
    price_in_per_mtok: float = Field(0.0, ge=0)
    price_out_per_mtok: float = Field(0.0, ge=0)

    @property
    def api_model(self) -> str:
        return self.served_name or self.name


class SearchConfig(Section):
    backend: Literal["local", "searxng", "serper"] = "local"
    corpora: list[str] = Field(["wiki"], description="local backend: 'wiki', 'drg', or folders of documents")
    searxng_url: str = "http://127.0.0.1:8888"
    serper_url: str = "https://google.serper.dev/search"
    serper_api_key_env: str = Field("SERPER_API_KEY", description="name of the env var holding the key")
    feedback_docs: int = Field(3, ge=0, le=20, description="local backend: pseudo-relevance feedback from the first "
                                                           "N results (0: plain BM25)")
    feedback_terms: int = Field(30, ge=1, le=200, description="local backend: feedback terms added to the query")
    feedback_weight: float = Field(0.2, gt=0, le=2.0, description="local backend: weight of each feedback term")
    feedback_keep: int = Field(3, ge=0, le=20, description="local backend: plain BM25's first N results stay first")
    timeout_s: float = Field(15.0, gt=0)
    retries: int = Field(2, ge=0, le=10)

    @field_validator("corpora")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one corpus is needed")
        return v


class CrawlConfig(Section):
    backend: Literal["local", "web"] = "local"
    allow_hosts: list[str] = Field(
        [], description="hosts or CIDRs the crawler may reach even if private/loopback (e.g. 127.0.0.1/32)")
    max_bytes: int = Field(2_000_000, gt=0)
    timeout_s: float = Field(20.0, gt=0)
    max_redirects: int = Field(5, ge=0, le=20)
    content_types: list[str] = ["text/html", "application/xhtml+xml", "text/plain"]
    user_agent: str = "o-researcher/0.1 (+research crawler)"


class TapeConfig(Section):
    mode: Literal["live", "record", "replay"] = "record"
    path: Path = Field(Path("data/tape.sqlite"), description="relative to the repo root")


class ResearchConfig(Section):
    search: SearchConfig = SearchConfig()
    crawl: CrawlConfig = CrawlConfig()
    tape: TapeConfig = TapeConfig()
    default_num_results: int = Field(10, ge=1, le=20)
    page_token_budget: int = Field(2000, ge=64, description="crawl_page output is cut to this many tokens")
    snippet_chars: int = Field(300, ge=40)


class TrainConfig(Section):
    """Training defaults shared by SFT and GRPO (their own sections come with their stages)."""

    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none", description="'zero2'/'zero3': training runs under `accelerate launch` with configs/accelerate/<it>.yaml "
                            "and configs/deepspeed/<it>.json")
    num_processes: int = Field(1, ge=1, description="training processes per machine (GPUs), with deepspeed")
    num_machines: int = Field(1, ge=1, description="machines; each runs the printed launch command with its "
                                                   "--machine_rank (accelerate's multi-node flags)")
    main_process_port: int = Field(29500, ge=1, le=65535, description="rendezvous port of the launched processes")
    launch_stall_timeout_s: float = Field(1800, ge=0, description="a launched training whose ranks print nothing "
                                                                  "for this long is stopped, their stacks dumped "
                                                                  "to its launch.err; 0: wait forever")
    bf16: Literal[True, False, "auto"] = Field(False, description="bf16 mixed precision; 'auto': where the hardware has "
                                                            "bf16 matrix units (see `bf16_enabled`)")
    max_seq_len: int = Field(2048, ge=128)

    def bf16_enabled(self) -> bool:
        """`bf16`, with "auto" resolved on this machine: a CUDA GPU that supports bf16, or a CPU with AVX512-BF16 or
        AMX (there autocast made a 2k-token LoRA step of the 135M model 1.7x faster); elsewhere bf16 would be
        emulated, slower than float32."""
        if self.bf16 != "auto":
            return self.bf16
        import torch

        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                             "_is_amx_tile_supported"))


class RolloutConfig(Section):
    """The policy writing a whole trace in one stream (`oresearcher.policy`): GRPO rollouts and evaluation."""

    max_turns: int = Field(24, ge=1, description="generations per trace (each ends at a tool call or the report)")
    max_tool_calls: int = Field(16, ge=0, description="tool calls per trace")
    max_new_tokens: int = Field(1024, ge=16, description="tokens per generation")


class AdapterConfig(Section):
    """LoRA adapters (PEFT)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    top_layers: int | None = Field(None, ge=1, description="adapters in the last N decoder layers only (default: "
                                                           "all): the backward pass stops at the lowest one")

    def lora(self, num_layers: int):
        """This adapter as PEFT's `LoraConfig`, for a model of `num_layers` decoder layers."""
        from peft import LoraConfig

        top = None if self.top_layers is None else list(range(max(0, num_layers - self.top_layers), num_layers))
        return LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, layers_to_transform=top)


class FinetuneConfig(Section):
    """Supervised fine-tuning of the policy (`model`) on an accepted filtered dataset version."""

    lora: bool = Field(True, description="train LoRA adapters (PEFT); false: full fine-tuning")
    adapter: AdapterConfig = AdapterConfig()
    epochs: float = Field(4.0, gt=0, description="sister-project default: 4")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    learning_rate: float = Field(1.4e-5, gt=0, description="sister-project default for full fine-tuning")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(1, ge=1, description="sequences per device per step")
    grad_accum: int = Field(1, ge=1)
    max_length: int | None = Field(None, ge=64, description="tokens per sample (default: train.max_seq_len)")
    packing: bool = False
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (a killed run resumes from the last)")
    seed: int = 0


class RewardWeights(Section):
    """R = judge·R_base + tool·R_tool + format·R_format (method.md §3)."""

    judge: float = Field(0.6, ge=0)
    tool: float = Field(0.2, ge=0)
    format: float = Field(0.2, ge=0)


class GuardConfig(Section):
    """Collapse and reward-hacking guards, checked on every GRPO step's rollouts. A tripped guard stops training
    and the stage registers the last checkpoint whose rollouts were healthy."""

    min_format_ratio: float = Field(0.5, ge=0, le=1, description="stop when a step's format pass rate falls below "
                                                                 "this share of the first step's")
    zero_variance_steps: int = Field(3, ge=1, description="stop after this many steps in a row in which every "
                                                          "group's rewards were all equal (no learning signal)")


class GrpoConfig(Section):
    """Agentic GRPO (method.md §1 step 5, §3) from a registered SFT version: each rollout is the policy runtime
    searching and reading in the research environment; observations carry no loss."""

    start_from: str | None = Field(None, description="'models:/<name>/<version>' or 'models:/<name>@<alias>'; "
                                                     "default: the newest version the sft stage registered")
    queries_per_step: int = Field(2, ge=1, description="prompts per optimizer step (per process)")
    num_generations: int = Field(4, ge=2, description="group size: rollouts per query")
    micro_batch_size: int = Field(1, ge=1, description="traces per forward/backward pass: a step's traces are "
                                                       "accumulated in micro-batches of this size (memory)")
    max_steps: int = Field(200, ge=1, description="the step cap")
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient against the starting policy (0: no reference pass)")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clip range of the importance ratio")
    temperature: float = Field(1.0, gt=0, le=2.0, description="rollout sampling temperature")
    reward_weights: RewardWeights = RewardWeights()
    lora: bool = Field(True, description="train LoRA adapters: the SFT version's own, or new ones over full weights")
    adapter: AdapterConfig = AdapterConfig()
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (a killed run resumes from the last)")
    seed: int = 0
    guard: GuardConfig = GuardConfig()
    rollout_backend: Literal["trainer", "vllm_server"] = Field(
        "trainer", description="'trainer': rollouts decode with the live trainer model in-process (CPU, one GPU); "
                               "'vllm_server': on a `trl vllm-serve` server that TRL syncs the weights into each step")
    vllm_server_url: str = Field("http://127.0.0.1:8000", description="vllm_server: where `trl vllm-serve` listens")
    vllm_tensor_parallel: int = Field(1, ge=1, description="vllm_server: GPUs per model copy on the server")

    @model_validator(mode="after")
    def _weights(self) -> GrpoConfig:
        if not any(self.reward_weights.model_dump().values()):
            raise ValueError("reward_weights are all 0: nothing to learn from")
        if (self.queries_per_step * self.num_generations) % self.micro_batch_size:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide queries_per_step x "
                             f"num_generations ({self.queries_per_step * self.num_generations})")
        return self


class HeldoutConfig(Section):
    """The held-out split: queries no stage trains on, run unguided by each model (base, SFT, GRPO)."""

    limit: int | None = Field(None, ge=1, description="the first N held-out queries (default: all)")
    temperature: float = Field(0.7, ge=0, le=2.0)
    seed: int = Field(0, description="sampling seed: the same rollouts on a re-run")
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)


class EvaluateConfig(Section):
    """The `evaluate` stage (method.md §5): policies run unguided on a query set, as in `heldout` (same decoding
    settings), their reports scored by the filter's judge (`filter.judge`: model, temperature, seed, cache)."""

    queries: str = Field("heldout", description="drb, drb-en, drb-zh, drg, heldout, or a seed file")
    limit: int | None = Field(None, ge=1, description="the first N queries of the set (drb: languages in turn)")
    reference: str | None = Field(None, description="RACE's reference system: a model or models:/ URI (default: the "
                                                    "base model); its reports are generated once, then frozen")
    race: Literal["pairwise", "pointwise"] = Field("pairwise", description="side by side against the reference "
                                                                           "reports, or reference-free")
    weight_samples: int = Field(5, ge=1, le=20, description="judge samples of a generated rubric's weights")
    n_criteria: int = Field(3, ge=1, le=10, description="criteria per dimension of a generated rubric")
    max_report_chars: int = Field(6000, ge=200, description="the judge reads at most this much of each report")
    max_statements: int = Field(20, ge=1, description="FACT: statements checked per report")
    page_chars: int = Field(4000, ge=200, description="FACT: characters of a cited page the judge reads")
    max_key_points: int = Field(10, ge=1, description="DeepResearchGym key points checked per query")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples of the tasks for each interval")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    primary_metric: Literal["race", "fact_accuracy", "kpr", "valid"] = Field(
        "race", description="what promotion compares")
    promote: bool = Field(True, description="move the champion alias to a challenger that beats it by more than "
                                            "the interval")
    endpoint_api_key_env: str | None = Field(None, description="env var of the key for an OpenAI-compatible "
                                                               "policy endpoint (never the key itself)")


class RetrainConfig(Section):
    """Scheduled retraining (`retrain` flow): seed files dropped in the inbox join the seed set, then the pipeline."""

    inbox: Path = Field(Path("inbox"), description="folder of new seed files (relative to the repo)")
    patterns: list[str] = Field(["*.jsonl", "*.csv", "*.parquet", "*.txt"], description="which inbox files are seeds")


class RegistryConfig(Section):
    policy_name: str = Field("o-researcher-policy", description="registered model name of the trained policies")


class MlflowConfig(Section):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="relative sqlite paths are under the repo root")
    experiment: str = "o-researcher"
    ui_url: str = Field("http://127.0.0.1:5000", description="where the MLflow UI serves this tracking store: the "
                                                             "link each Prefect run shows to its MLflow run")

    @field_validator("tracking_uri")
    @classmethod
    def _no_file_store(cls, v: str) -> str:
        if v.startswith("file:") or "://" not in v:
            raise ValueError("use a database URI such as sqlite:///mlflow.db (the file store is refused by MLflow 3)")
        return v

    def resolved_uri(self) -> str:
        prefix = "sqlite:///"
        if self.tracking_uri.startswith(prefix) and not self.tracking_uri[len(prefix):].startswith("/"):
            return prefix + str(REPO_ROOT / self.tracking_uri[len(prefix):])
        return self.tracking_uri


class DvcConfig(Section):
    """Where the data tree's versions go (`oresearcher.versioning`)."""

    remote: str | None = Field(None, description="a folder (relative to the repo) or an object store (s3://bucket/"
                                                 "prefix, gs://...; install dvc-s3 / dvc-gs); $ORESEARCHER_DVC_REMOTE "
                                                 "overrides it; unset: the repo's default remote (.dvc-storage)")
    push: bool = Field(True, description="push every version to the remote (what `oresearcher restore` reads)")

    def resolved_remote(self) -> str | None:
        return os.environ.get("ORESEARCHER_DVC_REMOTE") or self.remote


class IngestConfig(Section):
    min_chars: int = Field(15, ge=1)
    max_chars: int = Field(2000, ge=10)
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard of character 5-grams")
    contamination_threshold: float = Field(0.6, gt=0, le=1, description="similarity to an evaluation query")
    drop_contaminated: bool = Field(True, description="keep evaluation look-alikes out of the seed version")
    eval_sets: list[Literal["drb", "drg"]] = ["drb", "drg"]
    default_seeds: Path = Field(Path("seeds/default.jsonl"), description="what `make run` ingests")
    heldout_seeds: Path = Field(Path("seeds/heldout.jsonl"), description="the held-out split (`heldout` stage): a "
                                "seed this similar to one of them is kept out like an evaluation query")


class GuideConfig(Section):
    """Character caps of the free text a guided call may write (`oresearcher.grammar`'s decoding grammars): a small
    model cannot ramble to its token limit, and a call's grammar always fits its token budget."""

    think: int = Field(300, ge=10, description="<think> text")
    plan: int = Field(150, ge=10, description="<plan> text")
    query: int = Field(80, ge=5, description="one web_search query")
    queries: int = Field(2, ge=1, le=5, description="queries per web_search call")
    max_num: int = Field(10, ge=1, le=20, description="largest num= a guided web_search may ask for")
    subtask_line: int = Field(120, ge=10, description="one planner subtask")
    answer_sentence: int = Field(200, ge=20, description="one sentence of a <subtask_answer>")
    answer_sentences: int = Field(3, ge=1)
    heading: int = Field(60, ge=5, description="a report section heading")
    report_sentence: int = Field(220, ge=20, description="one sentence of the report")
    report_sentences: int = Field(3, ge=1, description="sentences per report section")
    min_sections: int = Field(3, ge=1, description="report sections (introduction, body..., conclusion)")
    max_sections: int = Field(5, ge=1)
    reason: int = Field(300, ge=10, description="a judge's one-line reason")

    @model_validator(mode="after")
    def _sections(self) -> GuideConfig:
        if self.min_sections > self.max_sections:
            raise ValueError(f"min_sections ({self.min_sections}) exceeds max_sections ({self.max_sections})")
        return self


class SynthesisConfig(Section):
    teacher: ModelConfig = ModelConfig()
    candidates_per_seed: int = Field(1, ge=1, le=16, description="k traces per seed")
    min_subtasks: int = Field(1, ge=1, le=10, description="guided planners write at least this many")
    max_subtasks: int = Field(3, ge=1, le=10)
    max_steps: int = Field(10, ge=1, description="reasoning steps per subtask agent (paper: 10 is best)")
    max_tool_calls: int = Field(8, ge=1, description="tool calls per subtask")
    max_tool_errors: int = Field(10, ge=1, description="give up a subtask after this many tool errors")
    same_kind_window: int = Field(15, ge=2, description="give up when this many last steps are all one kind")
    parallel_subtasks: bool = True
    prefill_think: bool = Field(False, description="start each agent step with '<think>' for the model "
                                                   "(helps small models; needs a backend that continues a prefill)")
    concurrency: int = Field(4, ge=1, description="seeds synthesized at once")
    max_cost_usd: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    seed_retries: int = Field(2, ge=0, description="Prefect retries of a seed's task on unexpected errors")
    limit: int | None = Field(None, ge=1, description="only the first N seeds (smoke runs)")
    mlflow_traces: bool = Field(True, description="log agent and tool spans as MLflow traces")
    task_runner: Literal["local", "dask"] = Field(
        "local", description="'local': seeds run concurrently in the flow's process; 'dask': each seed is a task on "
                             "a Dask cluster (prefect-dask), each worker process with its own clients")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (tcp://host:8786); "
                                                       "unset: a local cluster of `dask_workers` processes")
    dask_workers: int = Field(2, ge=1, description="worker processes of the local Dask cluster; the cost and token "
                                                   "caps are split evenly among them")
    guide: GuideConfig = GuideConfig()


class RulesConfig(Section):
    """Tier 1 of filtering (method.md §4): hard rules, each a named check in `oresearcher.criteria`."""

    min_tool_calls: int = Field(2, ge=0, description="tool calls a trace must make in all")
    max_tool_calls_per_subtask: int = Field(8, ge=1)
    min_report_chars: int = Field(500, ge=0, description="report body (without References), characters")
    context_tokens: int | None = Field(None, ge=64, description="a trace longer than this cannot train "
                                                                "(default: train.max_seq_len), in policy tokens")
    tool_error_prefixes: list[str] = Field(["Error:"], description="an observation starting with one of these "
                                                                    "is a tool error")
    same_language: bool = Field(True, description="the report is written in the query's script")
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="two candidates of one seed whose "
                                            "reports are this similar (Jaccard of character 5-grams): keep one")


class JudgeModelConfig(ModelConfig):
    """A judge's model: greedy and guided unless told otherwise (a score must be reproducible and parseable)."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    guided: bool = Field(True, description="hold the verdict to the score form (see ModelConfig.guided)")


class JudgeConfig(Section):
    """Tier 2: an LLM judge scores each trace that passed the rules against a rubric."""

    model: JudgeModelConfig = JudgeModelConfig()
    criteria: Literal["static", "generated"] = Field(
        "static", description="'static': the rubric below for every query; 'generated': the judge writes "
                              "n_criteria per query first (one extra call per seed, cached)")
    rubric: list[str] = [
        "Comprehensiveness: covers the main aspects the query asks about",
        "Insight: explains causes and consequences rather than listing facts",
        "Instruction following: answers the query that was asked",
        "Readability: clear structure, each claim supported by a citation",
    ]
    n_criteria: int = Field(4, ge=1, le=10)
    scale: int = Field(10, ge=1, le=100, description="scores run from 0 to this")
    keep: Literal["threshold", "best_of_k"] = Field(
        "threshold", description="'threshold': every trace scoring >= threshold; 'best_of_k': the best-scoring "
                                 "candidate of each seed, if it reaches the threshold")
    threshold: int = Field(6, ge=0)
    seed: int = Field(0, description="sampling seed of every judge call (re-runs read the cache)")
    max_report_chars: int = Field(6000, ge=200, description="the judge reads at most this much of a report")
    max_cost_usd: float | None = Field(None, ge=0)
    concurrency: int = Field(8, ge=1, description="judge calls in flight")
    guide: GuideConfig = Field(GuideConfig(reason=200), description="guided judges: the reason's length cap")

    @model_validator(mode="after")
    def _threshold_on_scale(self) -> JudgeConfig:
        if self.threshold > self.scale:
            raise ValueError(f"threshold ({self.threshold}) exceeds scale ({self.scale})")
        return self


class FilterConfig(Section):
    rules: RulesConfig = RulesConfig()
    judge: JudgeConfig = JudgeConfig()


class ReviewConfig(Section):
    """Tier 3: a human spot-check of a sample of what passed tiers 1-2, which gates training."""

    rate: float = Field(0.05, ge=0, le=1, description="share of each batch sampled for review")
    min_per_batch: int = Field(20, ge=0, description="at least this many per batch (all, if fewer)")
    required: bool = Field(False, description="the filter flow waits for the sample's verdicts and blocks a "
                                              "batch whose rejection rate is too high (scheduled retraining); "
                                              "false: it proceeds and marks the version 'unreviewed'")
    max_reject_rate: float = Field(0.2, ge=0, le=1, description="block the batch above this sampled rejection rate")
    reason_codes: list[str] = ["format", "unsupported_claim", "off_topic", "low_quality", "unsafe", "other"]
    host: str = Field("127.0.0.1", description="the review page listens here; beyond localhost only if set")
    port: int = Field(8765, ge=0, le=65535)
    token_env: str = Field("ORESEARCHER_REVIEW_TOKEN", description="env var holding the page's access token "
                                                                  "(unset: a random one, printed at start)")
    lease_s: float = Field(1800.0, gt=0, description="an item opened by a reviewer is theirs this long")
    poll_s: float = Field(10.0, gt=0, description="how often a waiting filter flow reads the queue")
    wait_timeout_s: float = Field(7 * 24 * 3600.0, gt=0, description="the filter flow stops waiting after this; "
                                                                      "the version stays 'pending_review'")

    @field_validator("reason_codes")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        if not v or len(v) > 9:
            raise ValueError("between 1 and 9 reason codes (the page maps them to keys 1-9)")
        return v


class Settings(Section):
    name: str = "tiny"
    paths: PathsConfig = PathsConfig()
    model: ModelConfig = ModelConfig()
    research: ResearchConfig = ResearchConfig()
    ingest: IngestConfig = IngestConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    filter: FilterConfig = FilterConfig()
    review: ReviewConfig = ReviewConfig()
    sft: FinetuneConfig = FinetuneConfig()
    rollout: RolloutConfig = RolloutConfig()
    grpo: GrpoConfig = GrpoConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    retrain: RetrainConfig = RetrainConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MlflowConfig = MlflowConfig()
    dvc: DvcConfig = DvcConfig()
    registry: RegistryConfig = RegistryConfig()

    @model_validator(mode="after")
    def _context_fits(self) -> Settings:
        if self.train.max_seq_len > self.model.max_context_tokens:
            raise ValueError(f"train.max_seq_len ({self.train.max_seq_len}) exceeds "
                             f"model.max_context_tokens ({self.model.max_context_tokens})")
        return self

    @property
    def tape_path(self) -> Path:
        return self.paths.resolve(self.research.tape.path)


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = value


def _format(err: ValidationError, source: str) -> str:
    """One line, every problem with its key: `configs/tiny.yaml: invalid config: a.b: msg; c.d: msg`."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        problems.append(f"{key}: {e['msg']}")
    return f"{source}: invalid config: " + "; ".join(problems)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Settings from a YAML file (None: defaults) with `a.b.c=value` overrides (values parsed as YAML)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path).expanduser()
        source = str(path)
        if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
            path = REPO_ROOT / path  # `configs/tiny.yaml` from any working directory
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        _set_dotted(data, key.strip(), value)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def flat_params(settings: Settings) -> dict[str, str]:
    """Flat `section.key -> value` for MLflow params. Configs hold env-var names, never secrets themselves."""
    flat: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                flat[key] = str(v)

    walk("", settings.model_dump(mode="json"))
    return flat
