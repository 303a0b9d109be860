"""``python -m tunepp_deploy`` = the ``tunepp`` command."""

from tunepp_deploy.cli.app import main

main()
