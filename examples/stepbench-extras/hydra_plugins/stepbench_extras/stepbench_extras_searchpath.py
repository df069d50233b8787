"""Adds this package's configs (``conf/{ac,adapter,sync,model}/*.yaml``) to Hydra's search path."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class StepbenchExtrasSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="stepbench-extras", path="pkg://stepbench_extras/conf")
