from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

import pixart_lab.config  # noqa: F401  (resolvers)
from pixart_lab.training.wiring import build_callbacks, build_loggers, wandb_logged_in

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")


def test_wandb_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logged_in()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not wandb_logged_in()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_logged_in()


def test_default_loggers_compose_wandb_offline_and_csv(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train_vae", overrides=[f"paths.log_dir={tmp_path}"])
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.project == "pixart-lab"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train_vae", overrides=[f"paths.log_dir={tmp_path}", "logger=csv"])
    loggers = build_loggers(cfg.logger)
    assert [type(lg) for lg in loggers] == [CSVLogger] and loggers[0].save_dir == str(tmp_path)
    callbacks = build_callbacks(cfg.callbacks, "extra")
    assert isinstance(callbacks[0], TQDMProgressBar) and callbacks[-1] == "extra"
