"""Adds this package's configs (``conf/attn/flex.yaml``) to Hydra's search path."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class StepbenchFlexSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="stepbench-flex", path="pkg://stepbench_flex/conf")
