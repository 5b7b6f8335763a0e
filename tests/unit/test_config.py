import pytest

from proxyqa.core.config import ConfigError, describe_fields, load_config
from proxyqa.pipeline.fingerprint import config_hash
from tests.helpers import REPO


def test_shipped_configs_validate():
    for name in ("local.yaml", "cluster.yaml"):
        load_config(REPO / "configs" / name)   # a missing file fails too


def test_unknown_key_names_its_path(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("decode:\n  num_frame: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'decode\.num_frame'"):
        load_config(bad)


def test_invalid_value_names_its_path(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("decode:\n  num_frames: 1\n")
    with pytest.raises(ConfigError, match=r"decode\.num_frames"):
        load_config(bad)


def test_set_overrides_parse_yaml_values():
    cfg = load_config(REPO / "configs" / "local.yaml",
                      ["decode.num_frames=8", "tasks.enabled=[temporal_order]", "s3.anon=true"])
    assert cfg.decode.num_frames == 8
    assert cfg.tasks.enabled == ["temporal_order"]
    assert cfg.s3.anon is True
    with pytest.raises(ConfigError, match="unknown config key 'decode.bogus'"):
        load_config(None, ["decode.bogus=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["decode.num_frames"])


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "c.yaml"
    evil.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_hash_ignores_resources_and_paths_but_not_content():
    base = load_config(None)
    same = load_config(None, ["decode.resources.num_cpus=4", "output=/elsewhere",
                              "input=s3://b/x", "ray.num_cpus=2"])
    other = load_config(None, ["decode.num_frames=8"])
    bumped = load_config(None, ["tasks.version=2"])
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)
    assert config_hash(base) != config_hash(bumped)


def test_secrets_are_masked_in_dumps():
    from proxyqa.core.config import public_dump

    cfg = load_config(None, ["s3.key=AKIAEXAMPLEKEY123", "s3.secret=topsecretvalue",
                             "mllm.endpoint.base_url=http://user:hunter2@gpu:8000/v1",
                             "s3.endpoint_url=http://minio:miniosecret@127.0.0.1:9000",
                             "mllm.engine.engine_kwargs={hf_token: hf_SECRET, max_model_len: 4096}"])
    dump = public_dump(cfg)
    text = str(dump)
    for secret in ("AKIAEXAMPLEKEY123", "topsecretvalue", "hunter2", "miniosecret", "hf_SECRET"):
        assert secret not in text
    # What is not secret stays readable.
    assert dump["mllm"]["endpoint"]["base_url"] == "http://**********@gpu:8000/v1"
    assert dump["s3"]["endpoint_url"] == "http://**********@127.0.0.1:9000"
    assert dump["mllm"]["engine"]["engine_kwargs"]["max_model_len"] == 4096
    assert dump["input"] == cfg.input and dump["output"] == cfg.output


def test_every_key_is_documented():
    rows = describe_fields()
    assert len(rows) > 30
    missing = [key for key, _, desc in rows if not desc]
    assert not missing, f"keys without a description: {missing}"


def test_config_reference_in_docs_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("upd", REPO / "scripts" / "update_readme_config.py")
    upd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upd)
    readme = (REPO / "docs" / "config.md").read_text()
    assert upd.render(readme) == readme, "run: python scripts/update_readme_config.py docs/config.md"
