"""Every config in the repo loads against the current code; errors name the offending key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from oresearcher.config import ConfigError, flat_params, load_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "paper.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_paper_config_is_the_paper_setup():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.model.name == "Qwen/Qwen2.5-72B-Instruct" and cfg.model.max_context_tokens == 65536
    assert cfg.model.backend == "vllm" and cfg.train.deepspeed == "zero3"
    assert cfg.research.search.backend == "serper" and cfg.research.crawl.backend == "web"


@pytest.mark.parametrize("override,key", [
    ("research.search.backend=bing", "research.search.backend"),
    ("research.default_num_results=50", "research.default_num_results"),
    ("model.nmae=x", "model.nmae"),
    ("research.crawl.max_bytes=-1", "research.crawl.max_bytes"),
    ("mlflow.tracking_uri=./mlruns", "mlflow.tracking_uri"),
    ("train.bf16=sometimes", "train.bf16"),
])
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"invalid config: (.*; )?{key}: "):
        load_config(REPO / "configs" / "tiny.yaml", [override])


def test_cross_field_check_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="train.max_seq_len"):
        load_config(REPO / "configs" / "tiny.yaml", ["train.max_seq_len=100000"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["no-equals-sign"])


def test_overrides_parse_yaml_values():
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["research.crawl.allow_hosts=['127.0.0.1/32']",
                                                       "research.page_token_budget=500"])
    assert cfg.research.crawl.allow_hosts == ["127.0.0.1/32"] and cfg.research.page_token_budget == 500


def test_bf16_auto_follows_the_hardware(monkeypatch):
    import torch

    tiny = REPO / "configs" / "tiny.yaml"
    assert load_config(tiny, ["train.bf16=false"]).train.bf16_enabled() is False
    assert load_config(tiny, ["train.bf16=true"]).train.bf16_enabled() is True
    auto = load_config(tiny, ["train.bf16=auto"]).train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for bf16_units, expected in ((False, False), (True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16_units: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert auto.bf16_enabled() is expected


def test_params_hold_env_var_names_not_secrets(monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", "sk-live-secret")
    params = flat_params(load_config(REPO / "configs" / "paper.yaml"))
    assert params["research.search.serper_api_key_env"] == "SERPER_API_KEY"
    assert "sk-live-secret" not in "".join(params.values())


@pytest.mark.parametrize("name", ["prefect.yaml", "prefect.gpu.yaml"])
def test_prefect_yaml_deployments_match_the_flows(name):
    """The deployment files cannot rot: every entrypoint imports, its parameters exist, and its config loads."""
    import importlib

    spec = yaml.safe_load((REPO / name).read_text())
    assert spec["deployments"] and "pull" not in spec  # no pull: runs use the checkout that deployed them
    pools = {dep["work_pool"]["name"] for dep in spec["deployments"]}
    assert pools == ({"local"} if name == "prefect.yaml" else {"gpu"})  # `deploy --all` needs no missing pool
    for dep in spec["deployments"]:
        module, func = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        accepted = inspect.signature(flow.fn).parameters
        assert set(dep.get("parameters", {})) <= set(accepted), dep["name"]
        if "config_path" in dep.get("parameters", {}):
            load_config(REPO / dep["parameters"]["config_path"], dep["parameters"].get("overrides"))
