"""The one reader of configuration: defaults, environment (with aliases), overrides, and clear errors."""

from __future__ import annotations

import pytest

from dfd.settings import Settings, SettingsError, ViewerSettings


def test_defaults_then_environment_then_overrides():
    s = Settings.from_env({})
    assert (s.artifacts_url, s.epochs, s.s3_max_attempts, s.ledger_flush_seconds) == ("artifacts", 40, 5, 1.0)
    s = Settings.from_env({"DFD_EPOCHS": "7", "ARTIFACTS_URL": "s3://b/a", "DFD_FACE_CROP": "yes"})
    assert (s.epochs, s.artifacts_url, s.face_crop) == (7, "s3://b/a", True)
    # DFD_<NAME> wins over the short alias; an explicit parameter wins over both; None means "not given".
    s = Settings.from_env({"DFD_ARTIFACTS_URL": "one", "ARTIFACTS_URL": "two"}, artifacts_url=None, epochs=3)
    assert (s.artifacts_url, s.epochs) == ("one", 3)


def test_s3_options_are_read_once_and_the_endpoint_normalised():
    env = {"AWS_MAX_ATTEMPTS": "9", "AWS_RETRY_MODE": "adaptive", "S3_CONNECT_TIMEOUT": "1.5",
           "S3_READ_TIMEOUT": "7", "S3_MAX_POOL_CONNECTIONS": "4", "S3_ENDPOINT_URL": "  "}
    opts = Settings.from_env(env).s3_options()
    assert opts == {"endpoint_url": None, "max_attempts": 9, "retry_mode": "adaptive", "connect_timeout": 1.5,
                    "read_timeout": 7.0, "max_pool_connections": 4}
    assert Settings.from_env({"S3_ENDPOINT_URL": "http://127.0.0.1:8333"}).s3_endpoint == "http://127.0.0.1:8333"


def test_settings_that_do_not_shape_the_model_are_not_model_settings():
    model = Settings.from_env({}).model_settings()
    assert "epochs" in model and "arch" in model
    assert not {"s3_read_timeout", "ledger_flush_seconds", "webhook_url", "artifacts_url"} & set(model)


@pytest.mark.parametrize("env, match", [
    ({"DFD_EPOCHS": "ten"}, "DFD_EPOCHS is not a valid int"),
    ({"AWS_MAX_ATTEMPTS": "many"}, "AWS_MAX_ATTEMPTS is not a valid int"),
    ({"DFD_LEDGER_FLUSH_SECONDS": "-1"}, "ledger_flush_seconds"),
    ({"S3_READ_TIMEOUT": "0"}, "s3_read_timeout"),
    ({"DFD_FACE_CROP": "maybe"}, "DFD_FACE_CROP is not a valid bool"),
])
def test_bad_values_fail_with_the_variable_named(env, match):
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="unknown setting 'epoch'"):
        Settings.from_env({}, epoch=3)


def test_webhook_secret_never_in_the_public_dict():
    d = Settings.from_env({"WEBHOOK_URL": "https://hooks.example/secret-token"}).public_dict()
    assert d["webhook_url"] == "(set)" and "secret-token" not in repr(d)


def test_viewer_settings_from_viewer_variables():
    v = ViewerSettings.from_env({})
    assert (v.port, v.page_size, v.token, v.predict_wait_seconds) == (8000, 50, "", 60.0)
    v = ViewerSettings.from_env({"VIEWER_PORT": "9001", "VIEWER_TOKEN": "t0k", "VIEWER_PAGE_SIZE": "20",
                                 "DFD_EPOCHS": "nonsense"})
    assert (v.port, v.token, v.page_size) == (9001, "t0k", 20)
    with pytest.raises(SettingsError, match="VIEWER_THREADS is not a valid int"):
        ViewerSettings.from_env({"VIEWER_THREADS": "eight"})


def test_one_setting_can_be_read_while_another_is_invalid():
    env = {"WEBHOOK_URL": "https://hooks.example/x", "DFD_EPOCHS": "ten"}
    assert Settings.one_from_env("webhook_url", env) == "https://hooks.example/x"
    assert Settings.one_from_env("webhook_url", {}) == ""
    with pytest.raises(SettingsError):
        Settings.from_env(env)
