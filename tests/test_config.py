import pytest

from pipeline.config import ConfigError, config_hash, describe_fields, load_config

from conftest import REPO


def test_shipped_configs_validate():
    for name in ("local.yaml", "cluster.yaml"):
        path = REPO / "configs" / name
        if path.exists():
            load_config(path)


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
    from pipeline.config import public_dump

    cfg = load_config(None, ["s3.key=AKIAEXAMPLEKEY123", "s3.secret=topsecretvalue"])
    text = str(public_dump(cfg))
    assert "AKIAEXAMPLEKEY123" not in text and "topsecretvalue" not in text


def test_every_key_is_documented():
    rows = describe_fields()
    assert len(rows) > 30
    missing = [key for key, _, desc in rows if not desc]
    assert not missing, f"keys without a description: {missing}"


def test_readme_config_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("upd", REPO / "scripts" / "update_readme_config.py")
    upd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upd)
    readme = (REPO / "README.md").read_text()
    assert upd.render(readme) == readme, "run: python scripts/update_readme_config.py"
