"""The shipped YAML configs, installed as ``tunepp_deploy.configs`` so ``--config phantom`` works from
any folder and from a built wheel (see :func:`tunepp_deploy.config.load.resolve_config_path`)."""
